# SPDX-License-Identifier: MIT
"""References to objects in a session's heap.

A :class:`Ref` is the client's side of one *client reference*: the server counts, per
object, how many references the client holds, and each ``Ref`` owns exactly one of
them.  So a ``Ref`` behaves like a Python variable bound to an object on the server:

* ``b = a.share()`` is ``b = a``: it takes another reference (the server's count
  goes up) and returns a new ``Ref`` that owns it.  Binding the same ``Ref`` to
  another Python name (``b = a``) does not touch the server, exactly as binding an
  ``int`` handle would not.
* ``a.release()`` is ``del a`` done by hand: the reference is dropped at once.
* When Python frees a ``Ref`` that still owns its reference (``del a`` on its last
  name, a local going out of scope, the end of a ``with`` block over it), the
  reference is dropped too.  ``__del__`` cannot talk to the server, so the drop is
  queued and sent ahead of the session's next request: ``del a`` followed by any
  call on the session behaves as it does in CPython.

Slots and payload mirror a Python object's attributes and its bytes:
``ref[i] = other`` stores a reference in slot ``i``, ``ref[i]`` reads it back as a
new ``Ref`` (or ``None``), ``ref.write()``/``ref.read()`` copy payload bytes.
"""

__all__ = ["Ref", "AsyncRef", "ObjectInfo"]

import collections

from .errors import ReferenceReleased

#: What :meth:`Ref.info` returns: the engine's ``hd_obj_info_t``.
ObjectInfo = collections.namedtuple(
    "ObjectInfo",
    "refcount client_refs sizeof size slots finalizer legacy_finalizer tracked generation "
    "tag site",
)
ObjectInfo.__doc__ = """Everything the server knows about one object.

refcount: as :meth:`Session.getrefcount`; client_refs: references the client holds;
sizeof: as :meth:`Session.getsizeof`; size: payload bytes; slots: number of slots;
finalizer/legacy_finalizer: the allocation flags; tracked: the collector tracks it;
generation: 0..2, 3 when frozen, -1 when untracked; tag, site: as given to alloc.
"""


class Ref:
    """One client reference to an object in a session's heap.

    Do not construct a ``Ref`` yourself: :meth:`Session.alloc`, :meth:`share`,
    slot reads and the ``gc`` and ``weakref`` helpers return them.  A ``Ref`` is
    also a context manager that releases its reference when the block ends::

        with s.alloc(size=64) as buf:
            buf.write(0, b"hello")
    """

    __slots__ = ("_session", "_handle", "_released", "__weakref__")

    def __init__(self, session, handle):
        self._session = session
        self._handle = handle
        self._released = False

    # -- identity --------------------------------------------------------------------------

    @property
    def handle(self):
        """The object's 64-bit handle (an ``int``); it stays readable after release."""
        return self._handle

    @property
    def session(self):
        """The :class:`Session` this reference belongs to."""
        return self._session

    @property
    def released(self):
        """True once this ``Ref`` no longer owns a reference."""
        return self._released

    def __eq__(self, other):
        """Two ``Ref`` objects are equal when they name the same object (Python's ``is``)."""
        if not isinstance(other, Ref):
            return NotImplemented
        return self._session is other._session and self._handle == other._handle

    def __hash__(self):
        return hash((id(self._session), self._handle))

    def __repr__(self):
        state = " released" if self._released else ""
        return f"<heapd.Ref {self._handle:#x}{state}>"

    def _live(self):
        """The handle, after checking that this ``Ref`` may still be used."""
        if self._released:
            raise ReferenceReleased(f"handle {self._handle:#x}")
        return self._handle

    # -- references ------------------------------------------------------------------------

    def share(self):
        """Takes another reference to the same object; returns the new ``Ref`` owning it."""
        return self._session.share(self)

    def release(self):
        """Drops this reference now; the object is freed if it was the last one.

        Raises :class:`heapd.ReferenceReleased` if it was already released.
        """
        return self._session.release(self)

    def forget(self):
        """Gives up ownership without dropping the reference; returns the handle.

        The reference stays held by the session until something adopts it again
        (:meth:`Session.adopt`), e.g. after resuming the session in another process.
        """
        handle = self._live()
        self._released = True
        return handle

    def __del__(self):
        if not self._released:
            self._released = True
            session = self._session
            if session is not None:
                session._release_later(self._handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self._released:
            self.release()

    # -- slots -----------------------------------------------------------------------------

    def __getitem__(self, index):
        """Reads slot ``index``: a new ``Ref`` to its target, or ``None`` if empty.

        An index past the last slot raises :class:`heapd.OutOfRange` (an
        :class:`IndexError`), so ``for child in ref:`` walks the slots.
        """
        return self._session.get_slot(self, index)

    def __setitem__(self, index, target):
        """Points slot ``index`` at ``target`` (a ``Ref``), or empties it for ``None``."""
        self._session.set_slot(self, index, target)

    def __delitem__(self, index):
        """Empties slot ``index`` (``del ref[i]`` is ``ref[i] = None``)."""
        self._session.set_slot(self, index, None)

    def get_slot(self, index):
        """``ref[index]`` by name (the form an asyncio session awaits)."""
        return self._session.get_slot(self, index)

    def set_slot(self, index, target):
        """``ref[index] = target`` by name (the form an asyncio session awaits)."""
        return self._session.set_slot(self, index, target)

    # -- payload ---------------------------------------------------------------------------

    def write(self, offset, data):
        """Copies ``data`` (bytes-like) into the payload at ``offset``."""
        return self._session.write(self, offset, data)

    def read(self, offset=0, length=None):
        """Returns ``length`` payload bytes from ``offset`` (``None``: to the end)."""
        return self._session.read(self, offset, length)

    def info(self):
        """Returns an :class:`ObjectInfo` describing the object."""
        return self._session.info(self)


class AsyncRef(Ref):
    """A :class:`Ref` of a :class:`heapd.asyncio.Session`: the same methods, as coroutines
    (``await ref.share()``, ``await ref.get_slot(0)``, ``await ref.set_slot(0, other)``),
    and ``async with`` in place of ``with``.  Subscripting cannot await, so ``ref[i] = x``
    raises :class:`TypeError`; use :meth:`set_slot`."""

    __slots__ = ()

    def __getitem__(self, index):
        raise TypeError("an asyncio Ref has no subscripts: use await ref.get_slot(i)")

    def __setitem__(self, index, target):
        raise TypeError("an asyncio Ref has no subscripts: use await ref.set_slot(i, x)")

    def __delitem__(self, index):
        raise TypeError("an asyncio Ref has no subscripts: use await ref.set_slot(i, None)")

    def __iter__(self):
        raise TypeError("an asyncio Ref is not iterable: await ref.get_slot(i) in a loop")

    def __enter__(self):
        raise TypeError("use async with for an asyncio Ref")

    def __exit__(self, *exc):  # pragma: no cover - __enter__ refuses
        pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        if not self._released:
            await self.release()
