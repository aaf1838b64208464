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

__all__ = ["Ref", "ObjectInfo"]

import collections

from .errors import OutOfRange, ReferenceReleased

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
        handle = self._live()
        self._session._incref(handle)
        return self._session._adopt(handle)

    def release(self):
        """Drops this reference now; the object is freed if it was the last one.

        Raises :class:`heapd.ReferenceReleased` if it was already released.
        """
        handle = self._live()
        self._released = True
        self._session._decref(handle)

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
        handle = self._live()
        return self._session._get_slot(handle, _slot_index(index))

    def __setitem__(self, index, target):
        """Points slot ``index`` at ``target`` (a ``Ref``), or empties it for ``None``."""
        handle = self._live()
        if target is None:
            target_handle = 0
        elif isinstance(target, Ref):
            if target._session is not self._session:
                raise ValueError("cannot store a reference from another session")
            target_handle = target._live()
        else:
            raise TypeError(f"slot value must be a heapd.Ref or None, not {type(target).__name__}")
        self._session._set_slot(handle, _slot_index(index), target_handle)

    def __delitem__(self, index):
        """Empties slot ``index`` (``del ref[i]`` is ``ref[i] = None``)."""
        self[index] = None

    # -- payload ---------------------------------------------------------------------------

    def write(self, offset, data):
        """Copies ``data`` (bytes-like) into the payload at ``offset``."""
        handle = self._live()
        if offset < 0:
            raise OutOfRange(f"negative offset {offset}")
        self._session._write(handle, offset, bytes(data))

    def read(self, offset=0, length=None):
        """Returns ``length`` payload bytes from ``offset`` (``None``: to the end)."""
        handle = self._live()
        if offset < 0 or (length is not None and length < 0):
            raise OutOfRange(f"negative offset or length ({offset}, {length})")
        return self._session._read(handle, offset, length)

    def info(self):
        """Returns an :class:`ObjectInfo` describing the object."""
        return self._session._obj_info(self._live())


def _slot_index(index):
    """Checks a slot index: slots are numbered 0..slots-1, with no negative indexing."""
    if not isinstance(index, int) or isinstance(index, bool):
        raise TypeError(f"slot index must be an int, not {type(index).__name__}")
    if index < 0 or index > 0xFFFFFFFF:
        raise OutOfRange(f"slot index {index}")
    return index
