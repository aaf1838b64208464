"""Weak references to objects in a session's heap, shaped like ``weakref.ref``."""

__all__ = ["WeakRef"]

from ._ops import OPS
from .errors import ReferenceReleased

_GET = OPS["weakref_get"]
_FREE = OPS["weakref_free"]


def _adopt(session, handle):
    return session._adopt(handle)


def _dead_or_adopt(weak):
    def finish(session, handle):
        if not handle:
            weak._dead = True
        return session._adopt(handle)
    return finish


def _none(session, value):
    return None


class WeakRef:
    """A weak reference (``s.weakref(ref, callback)``): it does not keep the object alive.

    ``w()`` returns a new :class:`heapd.Ref` to the object, or ``None`` once it is dead.
    ``callback``, if given, is called as ``callback(w)`` when the object dies, like
    ``weakref.ref``'s, during the call on the session that reads the server's event.
    As in Python, a weak reference that is itself freed first never calls back.

    The weak reference occupies an entry on the server until :meth:`close` or until
    Python frees this object (then the release is queued for the next request).
    """

    __slots__ = ("_session", "_weak", "_target", "_callback", "_closed", "_dead", "__weakref__")

    def __init__(self, session, weak, target, callback):
        self._session = session
        self._weak = weak
        self._target = target
        self._callback = callback
        self._closed = False
        self._dead = False

    @property
    def handle(self):
        """The weak handle (an ``int``), distinct from the object's handle."""
        return self._weak

    @property
    def callback(self):
        """The callback given at creation, or ``None`` (as ``weakref.ref.__callback__``)."""
        return self._callback

    def __call__(self):
        """A new :class:`heapd.Ref` to the referent, or ``None`` if it has died (in an
        asyncio session, a coroutine giving that)."""
        if self._closed:
            raise ReferenceReleased(f"weak reference {self._weak:#x} is closed")
        return self._session._do(_GET, _GET.args(weak=self._weak), _dead_or_adopt(self))

    def _referent_died(self):
        """Called by the session on the WEAKREF_CLEARED event."""
        self._dead = True
        if self._callback is not None and not self._closed:
            self._session._run_callback(self._callback, self)

    def close(self):
        """Frees the weak reference on the server now; calling it afterwards raises.
        Closing twice, or after the session was closed, does nothing.  (In an asyncio
        session, await it.)"""
        session = self._session
        if self._closed or session.closed:
            self._closed = True
            return session._done(None)
        self._closed = True
        session._weak_callbacks.pop(self._weak, None)
        return session._do(_FREE, _FREE.args(weak=self._weak), _none)

    def __del__(self):
        if not self._closed:
            self._closed = True
            session = self._session
            session._weak_callbacks.pop(self._weak, None)
            session._defer("weakref_free", weak=self._weak)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def __repr__(self):
        state = "closed" if self._closed else ("dead" if self._dead else f"to {self._target:#x}")
        return f"<heapd.WeakRef {self._weak:#x}; {state}>"
