# SPDX-License-Identifier: MIT
"""Exceptions raised by the heapd client.

Every status code the server can answer with comes from one list in the engine,
``HD_ERR_MAP`` in ``src/heap/heap.h``; the protocol's status is the negated
``hd_err_t``, so ``ENOOBJ`` (``HD_ENOOBJ = -4``) arrives as status 4.  ``ERROR_MAP``
below mirrors that list row for row (a unit test parses the header and checks that
the two agree exactly), and one exception class is generated per row.  Each class
derives from :class:`Error` and, where Python itself would raise a built-in
exception for the same mistake, from that built-in too: running out of memory is a
:class:`MemoryError`, a bad argument a :class:`ValueError`, an index past the end
an :class:`IndexError`, and so on.  So both of these work::

    try:
        s.alloc(size=1 << 20)
    except heapd.OutOfMemory: ...
    except MemoryError: ...

Errors that the client detects by itself (a dropped connection, a reference used
after its release, a reply that breaks the protocol) have their own classes below, also
under :class:`Error`.
"""

__all__ = [
    "ERROR_MAP",
    "Error",
    "BadReply",
    "ConnectionClosed",
    "ReferenceReleased",
    "error_class",
    "error_from_status",
]


class Error(Exception):
    """Base class of every exception the heapd client raises.

    Attributes:
        code: the protocol status (a positive number from ``HD_ERR_MAP``), or 0
            for errors found by the client itself.
        name: the engine's name of the code (``"ENOOBJ"``), or ``""``.
        detail: the server's explanation, if it sent one.
    """

    code = 0
    name = ""
    message = "heapd client error"

    def __init__(self, detail=None):
        self.detail = detail or None
        if not detail:
            text = self.message
        elif detail.startswith(self.message):
            text = detail  # the server's message already starts with the code's text
        else:
            text = f"{self.message}: {detail}"
        if self.name:
            text = f"[{self.name}] {text}"
        super().__init__(text)


class ConnectionClosed(Error, ConnectionError):
    """The connection to the daemon is gone (closed, reset or never opened)."""

    message = "connection to heapd closed"


class ReferenceReleased(Error, ValueError):
    """A :class:`~heapd.Ref` was used after its reference was released.

    Like using a closed file, this is a :class:`ValueError`; the client raises it
    without asking the server.
    """

    message = "reference already released"


# One row per entry of HD_ERR_MAP, in the same order:
#   (engine name, status number, engine message, Python class name, extra built-in bases)
# The first three columns must equal the header's XX(NAME, number, message) exactly.
ERROR_MAP = (
    ("EINVAL", 1, "invalid argument", "InvalidArgument", (ValueError,)),
    ("ENOMEM", 2, "out of memory", "OutOfMemory", (MemoryError,)),
    ("ELIMIT", 3, "heap limit reached (bytes or objects)", "LimitReached", (MemoryError,)),
    ("ENOOBJ", 4, "no such object (unknown, freed or foreign handle)", "NoSuchObject", ()),
    ("ERANGE", 5, "index or offset out of range", "OutOfRange", (IndexError,)),
    ("EREFS", 6, "the client does not hold that many references", "NotEnoughReferences",
     (ValueError,)),
    ("EOVERFLOW", 7, "reference count overflow", "RefcountOverflow", (OverflowError,)),
    ("ENOWEAK", 8, "no such weak reference", "NoSuchWeakref", ()),
    ("ENOSNAP", 9, "no such snapshot", "NoSuchSnapshot", ()),
    ("ENOTRACE", 10, "tracing is not started", "NotTracing", (RuntimeError,)),
    ("ENOCURSOR", 11, "no such cursor (finished or expired)", "NoSuchCursor", ()),
    ("EPROTO", 20, "malformed request", "ProtocolError", ()),
    ("EFRAME", 21, "frame too large", "FrameTooLarge", ()),
    ("EVERSION", 22, "unsupported protocol version", "UnsupportedVersion", ()),
    ("EAUTH", 23, "authentication failed", "AuthenticationFailed", ()),
    ("EPERM", 24, "permission denied", "PermissionDenied", ()),
    ("ENOSESSION", 25, "no such session", "NoSuchSession", ()),
    ("EHELLO", 26, "hello required first", "HelloRequired", ()),
    ("EUNKNOWN", 27, "unknown request type", "UnknownRequest", ()),
    ("ETOOMANY", 28, "too many connections or sessions", "TooMany", ()),
    ("ESHUTDOWN", 29, "server is shutting down", "ShuttingDown", ()),
    ("EBUSY", 30, "session is attached to another connection", "SessionBusy", ()),
    ("ETIMEDOUT", 31, "idle timeout", "IdleTimeout", ()),
    ("EREPLAY", 32, "request id older than the replay window (not run again)", "ReplayExpired",
     ()),
    ("EIO", 33, "I/O error (persistence)", "PersistenceError", (OSError,)),
    ("EMOVED", 34, "the session lives on another node", "Moved", ()),
    ("EINTERNAL", 99, "internal error", "InternalError", ()),
)

_BY_CODE = {}


def _make_classes():
    """Creates one exception class per ERROR_MAP row and exports it from this module."""
    for name, code, message, cls_name, extra in ERROR_MAP:
        cls = type(cls_name, (Error,) + tuple(extra), {
            "__doc__": f"Status {code} ({name}): {message}.",
            "__module__": __name__,
            "code": code,
            "name": name,
            "message": message,
        })
        globals()[cls_name] = cls
        __all__.append(cls_name)
        _BY_CODE[code] = cls


_make_classes()
# A redirect to the node that owns the session (docs/SCALING.md): the client follows it by
# itself; when it cannot (too many hops), ``url`` says where the server sent it.
Moved.url = ""  # noqa: F821 (made by _make_classes)


class BadReply(ProtocolError):  # noqa: F821 (made by _make_classes)
    """The server's reply broke the protocol: a hello that is not heapd's, an undecodable
    frame, a response that does not answer the request it should, a frame over the limit.

    The client finds this itself (``code`` is 0, ``name`` ``"EBADREPLY"``, as the C
    client's ``HDC_EBADREPLY``) and drops the connection, which can no longer be trusted.
    It is a :class:`ProtocolError`, the class of the server's own EPROTO.
    """

    code = 0
    name = "EBADREPLY"
    message = "malformed or unexpected reply from the server"


def error_class(code):
    """The exception class for a protocol status (a positive code); :class:`Error` if unknown."""
    return _BY_CODE.get(code, Error)


def error_from_status(code, detail=None, name=None):
    """Builds the exception for a failed response with status ``code``.

    ``detail`` is the server's message (``Status.message``), ``name`` its name for the
    code.  A status the client does not know (from a newer server) still gives an
    :class:`Error`, with the number kept in ``code`` and the server's name in ``name``.
    """
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(detail)
    err = Error(f"status {code}" + (f": {detail}" if detail else ""))
    err.code = code
    err.name = name or ""
    return err
