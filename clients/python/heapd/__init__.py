# SPDX-License-Identifier: MIT
"""heapd: a Python client for the heapd memory-management daemon.

heapd hosts one managed object heap per client session: CPython's memory manager as a
service.  This package speaks its protocol (length-prefixed protobuf frames over TCP or
a Unix socket) and gives the heap the shape Python users know::

    import heapd

    with heapd.connect("tcp://127.0.0.1:7420") as s:
        a = s.alloc(slots=2, tag="list")   # a = []          refcount 1
        b = a.share()                      # b = a           refcount 2
        print(s.getrefcount(a))            # 2
        del a                              # del a           refcount 1
        print(s.getrefcount(b))            # 1
        del b                              # del b           freed
        print(s.stats()["objects"])        # 0

Objects and references
    :meth:`Session.alloc` returns a :class:`Ref`, and each ``Ref`` owns exactly one
    client reference.  ``ref.share()`` takes another (``b = a`` in Python terms),
    ``ref.release()`` drops it, and a ``Ref`` that Python frees drops its reference
    too: the release is queued and sent ahead of the session's next request.  Slots
    hold references between objects (``a[0] = b``; ``a[0]`` gives a new ``Ref``, or
    ``None``), and the payload holds bytes (``ref.write(offset, data)``,
    ``ref.read(offset, length)``).  ``with s.scope():`` releases every reference taken
    inside the block when it ends.

Modules you know, per session
    ``s.getrefcount(ref)`` and ``s.getsizeof(ref)`` are ``sys``'s; ``s.gc`` is the
    ``gc`` module (:class:`GC`); ``s.weakref`` is ``weakref`` (calling it is
    ``weakref.ref``; also ``finalize``, ``WeakValueDictionary``); ``s.tracemalloc`` is
    ``tracemalloc`` (:class:`Tracemalloc`; its snapshots are ``tracemalloc.Snapshot``);
    ``s.stats()`` is ``sys._debugmallocstats()`` as a dict.

Finalizers
    ``s.alloc(..., finalizer=True)`` marks an object whose death the server reports,
    as ``__del__`` would run: ``s.on_finalize = callable`` is then called with a
    :class:`Finalized` ``(handle, tag)`` for each such object freed.  Passing a
    callable, ``finalizer=callable``, registers it for that object alone (and
    ``on_finalize`` still runs).  ``legacy_finalizer=True`` makes a cycle through the
    object uncollectable: it goes to ``s.gc.garbage``, as cycles with ``__del__`` did
    before Python 3.4.

Events and callbacks
    The server reports finalizations, cleared weak references and collections as
    events on the same stream as the responses.  The client routes them as it reads:
    callbacks (``on_finalize``, per-object finalizers, weak reference callbacks,
    ``s.gc.callbacks``) run *during a call on the session*, in the thread that made
    it, after that call's response has arrived and before the call returns.  A call
    that may raise events (alloc, release, slot stores, ``gc.collect()``) waits for
    its own events, so ``s.gc.collect()`` returns after its ``"stop"`` callback ran.
    Events are only requested while some callback is registered.  Callbacks may call
    the session.  An exception in a callback is printed and ignored, as Python does
    for ``gc.callbacks`` and weakref callbacks.  ``s.poll(timeout)`` reads events
    without making a call.  While a callback waits for deaths (finalizers, weak
    reference callbacks), ``del ref`` on an idle session releases at once, so the
    callback runs at the ``del`` as ``__del__`` does.

Errors
    Every failure raises a subclass of :class:`Error`, one per server status code
    (:class:`NoSuchObject`, :class:`OutOfMemory`, ...; see :mod:`heapd.errors`), which
    also subclasses the built-in Python would raise: ``OutOfMemory`` and
    ``LimitReached`` are ``MemoryError``, ``InvalidArgument`` is ``ValueError``,
    ``OutOfRange`` is ``IndexError``, ``NotTracing`` is ``RuntimeError``.

Pipelines
    ``with s.pipeline() as p:`` queues calls (the session's methods; each returns ``p``)
    and sends them in one write at the end of the block; ``p.results`` holds their
    results in order.  The first failure is raised once every result is in, or with
    ``raise_on_error=False`` kept in the results as the exception object, as redis-py
    does.  ``s.alloc_many(n, ...)`` and ``s.release_many(refs)`` do many in one round trip.

asyncio
    :mod:`heapd.asyncio` has the same session with coroutines for methods
    (``s = await heapd.asyncio.connect(url)``), usable from many tasks at once.

Speed
    A C codec (``heapd._speedups``) encodes and decodes frames, as hiredis does for
    redis-py; without it the client runs on a pure-Python codec that behaves the same.
    :data:`implementation` is ``"c"`` or ``"python"``; ``$HEAPD_PYTHON_IMPLEMENTATION``
    chooses.

Sessions and connections
    :func:`connect` takes ``tcp://host:port``, ``host:port``, ``unix:/path`` or ``/path``
    (default ``$HEAPD_URL``), and ``tls://host:port`` for a server's TLS listener (the
    stdlib :mod:`ssl`: ``ssl_context=``, or redis-py's ``ssl_ca_certs=``,
    ``ssl_certfile=`` and ``ssl_keyfile=`` for mutual TLS).  It checks the server's hello and raises :class:`BadReply`
    (a :class:`ProtocolError`) for anything but heapd's; every response is checked
    against the request it answers.  Leaving the
    ``with`` block (or ``s.close()``) says goodbye, which ends the session.  If the
    connection drops, the server keeps the session for a while: ``s.reconnect()``
    resumes it in place (every ``Ref`` stays valid), and
    ``heapd.connect(url, resume=(s.session_id, s.resume_token))`` resumes it from a
    new ``Session`` (hand references over with ``handle = ref.forget()`` and take them
    back with ``s.adopt(handle)``).  ``s.detach()`` drops the connection on purpose.
    Releases queued when the server ended the connection (idle timeout) are sent
    after the resume.  ``connect(url, resume_timeout=SECONDS)`` resumes by itself after
    a drop or a restart and re-sends what was unanswered, which the server answers
    without running it twice (``s.resumes`` counts the resumes).
"""

from . import errors
from ._codec import implementation
from ._core import PROTOCOL_VERSION, Finalized, Limits, Scope
from ._gc import (DEBUG_COLLECTABLE, DEBUG_LEAK, DEBUG_SAVEALL, DEBUG_STATS,
                  DEBUG_UNCOLLECTABLE, GC, GarbageList)
from ._ref import AsyncRef, ObjectInfo, Ref
from ._session import Pipeline, Session, connect
from ._trace import (DomainFilter, Filter, Frame, Snapshot, Statistic, StatisticDiff,
                     TagStatistic, TagStatisticDiff, Traceback, Tracemalloc)
from ._transport import DEFAULT_URL, parse_url
from ._version import __version__  # generated from project(VERSION) by CMake
from ._weak import Finalize, WeakRef, WeakValueDictionary, WeakrefModule
from .errors import *  # noqa: F401,F403 (one exception class per server status code)

__all__ = [
    "connect", "Session", "Pipeline", "Ref", "AsyncRef", "Scope", "WeakRef", "Finalize",
    "WeakValueDictionary", "WeakrefModule", "GC",
    "GarbageList", "Tracemalloc", "Snapshot", "Statistic", "StatisticDiff", "TagStatistic",
    "TagStatisticDiff", "Traceback", "Frame", "Filter", "DomainFilter", "ObjectInfo",
    "Finalized", "Limits", "DEFAULT_URL", "PROTOCOL_VERSION", "parse_url", "DEBUG_STATS",
    "DEBUG_COLLECTABLE", "DEBUG_UNCOLLECTABLE", "DEBUG_SAVEALL", "DEBUG_LEAK", "errors",
    "implementation", "__version__",
] + errors.__all__


def __getattr__(name):
    # heapd.asyncio is imported on first use, so that a blocking program does not pay for
    # the asyncio module.
    if name == "asyncio":
        import importlib
        return importlib.import_module(".asyncio", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
