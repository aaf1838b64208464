# SPDX-License-Identifier: MIT
"""Which wire codec the client runs on: the C extension, or its pure-Python twin.

``heapd._speedups`` (C, built with the package when Python's headers are present) and
``heapd._pycodec`` (pure Python) have one interface and one behaviour (see
``_pycodec.py``); this module picks one at import and makes it from the message table of
``_ops.SCHEMA``.  ``$HEAPD_PYTHON_IMPLEMENTATION`` chooses: ``c`` (fail if the extension is
missing), ``python``, or unset (the extension when it imports, else Python).
:data:`implementation` says which is in use; it is also ``heapd.implementation``.
"""

import os

from . import _ops, _pycodec

__all__ = ["codec", "implementation", "make_codec"]

_ENV = "HEAPD_PYTHON_IMPLEMENTATION"


def make_codec(name=None):
    """A codec of implementation ``name`` (``"c"`` or ``"python"``; None: the default)."""
    if name == "python":
        return _pycodec.Codec(_ops.SCHEMA.as_tuple())
    try:
        from . import _speedups
    except ImportError:
        if name == "c":
            raise
        return _pycodec.Codec(_ops.SCHEMA.as_tuple())
    return _speedups.Codec(_ops.SCHEMA.as_tuple())


def _choose():
    choice = os.environ.get(_ENV, "").strip().lower()
    if choice not in ("", "c", "python"):
        raise ImportError(f"${_ENV} is {choice!r}: use 'c' or 'python' (or leave it unset)")
    return make_codec(choice or None)


codec = _choose()

#: ``"c"`` when the C codec is in use, ``"python"`` for the pure-Python one.
implementation = "python" if isinstance(codec, _pycodec.Codec) else "c"
