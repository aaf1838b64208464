# SPDX-License-Identifier: MIT
"""Weak references to objects in a session's heap, shaped like Python's ``weakref`` module.

``s.weakref`` is the module (:class:`WeakrefModule`): calling it, or its ``ref``, is
``weakref.ref(obj, callback)``; ``s.weakref.finalize(obj, func, *args, **kwargs)`` is
``weakref.finalize``; ``s.weakref.WeakValueDictionary()`` is that mapping.  Each weak
reference is one on the server (``weakref_new``), which reports the referent's death as an
event: callbacks and finalizers run when the client reads it, during a call on the session,
or at the ``del`` that kills the object when the session is idle (see :mod:`heapd`).

As in Python, ``WeakRef`` may be subclassed (``class ExtendedRef(s.weakref.ref): ...``) and
its instances made directly (``WeakRef(ref, callback)``), in a blocking session.
"""

__all__ = ["WeakRef", "Finalize", "WeakValueDictionary", "WeakrefModule",
           "AsyncWeakrefModule"]

import atexit
import sys
import traceback
import weakref as _pyweakref
from collections.abc import MutableMapping

from ._ops import OPS
from ._ref import Ref
from .errors import ReferenceReleased

_NEW = OPS["weakref_new"]
_GET = OPS["weakref_get"]
_FREE = OPS["weakref_free"]
_OBJ_INFO = OPS["obj_info"]


def _dead_or_adopt(weak):
    def finish(session, handle):
        if not handle:
            weak._dead = True
        return session._adopt(handle)
    return finish


def _none(session, value):
    return None


def _made(target, callback, into):
    """The finisher of weakref_new: the weak handle becomes ``into`` (a WeakRef being
    initialised) or a new WeakRef."""
    def finish(session, weak):
        if not weak:
            session._protocol_error("weakref_new answered with weak handle 0")
        w = into if into is not None else WeakRef.__new__(WeakRef)
        w._setup(session, weak, target, callback)
        return w
    return finish


class WeakRef:
    """A weak reference (``s.weakref(ref, callback)``): it does not keep the object alive.

    ``w()`` returns a new :class:`heapd.Ref` to the object, or ``None`` once it is dead.
    ``callback``, if given, is called as ``callback(w)`` when the object dies, like
    ``weakref.ref``'s, during the call on the session that reads the server's event.
    As in Python, a weak reference that is itself freed first never calls back.

    ``WeakRef(ref, callback)`` makes one directly (one round trip, in a blocking session),
    which is what a subclass's ``super().__init__(ob, callback)`` does.

    The weak reference occupies an entry on the server until :meth:`close` or until
    Python frees this object (then the release is queued for the next request).
    """

    __slots__ = ("_session", "_weak", "_target", "_callback", "_closed", "_dead", "__weakref__")

    def __init__(self, ob, callback=None, /):
        if not isinstance(ob, Ref):
            raise TypeError(f"cannot create weak reference to {type(ob).__name__!r} object")
        session = ob._session
        if session._is_async:
            raise TypeError("in an asyncio session, make weak references with "
                            "await s.weakref(ref)")
        session._weakref_new(ob, callback, into=self)

    def _setup(self, session, weak, target, callback):
        self._session = session
        self._weak = weak
        self._target = target
        self._callback = callback
        self._closed = False
        self._dead = False
        if callback is not None:
            session._weak_callbacks[weak] = _pyweakref.ref(self)

    @property
    def handle(self):
        """The weak handle (an ``int``), distinct from the object's handle."""
        return self._weak

    @property
    def callback(self):
        """The callback given at creation, or ``None`` (as ``weakref.ref.__callback__``)."""
        return self._callback

    __callback__ = callback

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

    def _release_later(self):
        if not self._closed:
            self._closed = True
            session = self._session
            session._weak_callbacks.pop(self._weak, None)
            session._defer("weakref_free", weak=self._weak)

    def __del__(self):
        if getattr(self, "_session", None) is not None:
            self._release_later()

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


class Finalize:
    """``s.weakref.finalize(obj, func, *args, **kwargs)``: calls ``func(*args, **kwargs)``
    once, when ``obj`` dies, as ``weakref.finalize`` does.

    A finalizer is *alive* until it is called, either by the death of its object or
    explicitly (``f()``, which returns ``func``'s result, then None ever after), or until
    :meth:`detach`.  Alive finalizers whose :attr:`atexit` is true (the default) are called
    when their session says goodbye, and at interpreter exit, newest first, as Python calls
    them at exit.  The session keeps an alive finalizer alive.
    """

    def __init__(self, weak, func, args, kwargs, type_name=""):
        self._weak = weak
        self._type_name = type_name or "heapd.Ref"
        self._func = func
        self._args = args
        self._kwargs = kwargs
        self.atexit = True
        session = weak._session
        session._finalizers_alive[weak._weak] = self
        _SESSIONS_WITH_FINALIZERS.add(session)

    @property
    def alive(self):
        """True until the finalizer has been called or detached."""
        return self._func is not None

    def _take(self):
        """Marks the finalizer dead; returns (func, args, kwargs), or None if it was."""
        if self._func is None:
            return None
        call = (self._func, self._args, self._kwargs)
        self._func = self._args = self._kwargs = None
        weak = self._weak
        weak._session._finalizers_alive.pop(weak._weak, None)
        weak._release_later()
        return call

    def __call__(self, _=None):
        """If alive, marks it dead and returns ``func(*args, **kwargs)``; else None."""
        call = self._take()
        if call is not None:
            func, args, kwargs = call
            return func(*args, **(kwargs or {}))
        return None

    def _fire(self, weak):
        """The object died: call, printing an exception as Python prints a finalizer's."""
        call = self._take()
        if call is None:
            return
        func, args, kwargs = call
        try:
            func(*args, **(kwargs or {}))
        except Exception:
            print(f"Exception ignored in: {self!r}", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)

    def detach(self):
        """If alive, marks it dead and returns ``(obj, func, args, kwargs)``, ``obj`` a new
        Ref to the object (None if it has died meanwhile); else None.  (In an asyncio session,
        a coroutine giving that.)"""
        weak = self._weak
        if self._func is None:
            return weak._session._done(None)
        op = _GET

        def finish(session, handle):
            call = self._take()
            if call is None:
                return None
            return (session._adopt(handle), call[0], call[1], call[2] or {})
        return weak._session._do(op, op.args(weak=weak._weak), finish)

    def peek(self):
        """If alive, ``(obj, func, args, kwargs)`` without marking it dead; else None."""
        weak = self._weak
        if self._func is None:
            return weak._session._done(None)

        def finish(session, handle):
            if self._func is None:
                return None
            return (session._adopt(handle), self._func, self._args, self._kwargs or {})
        return weak._session._do(_GET, _GET.args(weak=weak._weak), finish)

    def __repr__(self):
        if self._func is None:
            return f"<finalize object at {id(self):#x}; dead>"
        return (f"<finalize object at {id(self):#x}; for {self._type_name!r} at "
                f"{self._weak._target:#x}>")


_SESSIONS_WITH_FINALIZERS = _pyweakref.WeakSet()


def run_atexit_finalizers(session):
    """Calls the session's alive finalizers that want it, newest first (its goodbye and
    interpreter exit)."""
    pending = [f for f in reversed(list(session._finalizers_alive.values())) if f.atexit]
    for f in pending:
        f._fire(None)


@atexit.register
def _at_exit():
    for session in list(_SESSIONS_WITH_FINALIZERS):
        if not session.closed:
            run_atexit_finalizers(session)


class WeakValueDictionary(MutableMapping):
    """``s.weakref.WeakValueDictionary()``: a mapping whose values are the session's objects,
    held weakly: an entry goes when its object dies, as ``weakref.WeakValueDictionary``'s.

    Storing makes a weak reference on the server, reading asks it (a round trip each);
    ``d[key]`` is a new Ref, or KeyError once the object is dead.  A blocking session's only.
    """

    def __init__(self, session, other=(), /, **kwargs):
        if session._is_async:
            raise TypeError("WeakValueDictionary needs a blocking session")
        self._session = session
        self._data = {}
        self.update(other, **kwargs)

    def _remover(self, key):
        me = _pyweakref.ref(self)

        def remove(w):
            d = me()
            if d is not None and d._data.get(key) is w:
                del d._data[key]
        return remove

    def __setitem__(self, key, value):
        w = WeakRef(value, self._remover(key))
        old = self._data.get(key)
        self._data[key] = w
        if old is not None:
            old._release_later()

    def __getitem__(self, key):
        o = self._data[key]()
        if o is None:
            raise KeyError(key)
        return o

    def __delitem__(self, key):
        self._data.pop(key)._release_later()

    def __contains__(self, key):
        try:
            w = self._data[key]
        except KeyError:
            return False
        return w() is not None

    def __iter__(self):
        return iter(list(self._data))

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        return f"<heapd.WeakValueDictionary at {id(self):#x}>"


class WeakrefModule:
    """``s.weakref``: Python's ``weakref`` module for the session's heap.

    Calling it is ``weakref.ref``: ``s.weakref(ref, callback)`` returns a :class:`WeakRef`.
    ``ref`` is the :class:`WeakRef` class (``s.weakref.ref(obj)``, and subclassable);
    ``finalize`` and ``WeakValueDictionary`` are those of the stdlib.
    """

    ref = WeakRef
    ReferenceType = WeakRef

    def __init__(self, owner):
        self._owner = owner  # the session, or a pipeline

    def __call__(self, ref, callback=None):
        """``weakref.ref(obj, callback)``: a :class:`WeakRef` to ``ref``'s object."""
        return self._owner._weakref_new(ref, callback)

    def finalize(self, obj, func, /, *args, **kwargs):
        """``weakref.finalize(obj, func, *args, **kwargs)``: a :class:`Finalize`.  (One
        round trip, which also reads the object's tag, its type name in the repr.)"""
        if not callable(func):
            raise TypeError("func must be callable")
        owner = self._owner
        return owner._drive(self._finalize_steps(owner._handle(obj), func, args, kwargs))

    def _finalize_steps(self, handle, func, args, kwargs):
        holder = {}

        def fire(w):
            f = holder.get("f")
            if f is not None:
                f._fire(w)

        weak, info = yield [(_NEW, _NEW.args(handle=handle, notify=True), _made(handle, fire, None)),
                            (_OBJ_INFO, _OBJ_INFO.args(handle), None)]
        f = holder["f"] = Finalize(weak, func, args, kwargs, info.tag)
        return f

    def WeakValueDictionary(self, other=(), /, **kwargs):  # noqa: N802 - the stdlib's name
        """A new :class:`WeakValueDictionary` of this session."""
        return WeakValueDictionary(self._owner._root, other, **kwargs)

    def getweakrefcount(self, obj):
        raise NotImplementedError("the server does not count an object's weak references")

    def __repr__(self):
        return f"<heapd weakref module of {self._owner!r}>"


class AsyncWeakrefModule(WeakrefModule):
    """``s.weakref`` of an asyncio session: ``await s.weakref(ref)``, ``await
    s.weakref.ref(ref)``, ``await s.weakref.finalize(obj, func, ...)``."""

    async def __call__(self, ref, callback=None):
        return await self._owner._weakref_new(ref, callback)

    async def ref(self, ob, callback=None):
        return await self._owner._weakref_new(ob, callback)

    async def finalize(self, obj, func, /, *args, **kwargs):
        return await WeakrefModule.finalize(self, obj, func, *args, **kwargs)

    def WeakValueDictionary(self, other=(), /, **kwargs):  # noqa: N802
        raise TypeError("WeakValueDictionary needs a blocking session")
