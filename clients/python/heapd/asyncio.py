# SPDX-License-Identifier: MIT
"""heapd for asyncio: the same session, with coroutines for methods.

::

    import heapd.asyncio

    async def main():
        async with heapd.asyncio.connect("unix:/run/heapd/heapd.sock") as s:
            a = await s.alloc(slots=1, tag="list")
            b = await a.share()
            print(await s.getrefcount(a))      # 2
            await a.set_slot(0, b)             # a[0] = b
            async with s.pipeline() as p:
                for _ in range(1000):
                    p.alloc(size=64)
            refs = p.results

:func:`connect` returns something to ``await`` (the :class:`Session`) or to use with
``async with`` (which closes the session at the end).  The session has the blocking
:class:`heapd.Session`'s methods, with the same names and arguments, as coroutines
(``await s.ping()``, ``await s.gc.collect()``, ``await s.tracemalloc.start()``); the
:class:`heapd.AsyncRef` objects it hands out have :class:`heapd.Ref`'s methods as
coroutines too (``await ref.share()``, ``await ref.get_slot(0)``), with ``async with``
for ``with``.  What needs no round trip stays a plain method: ``s.adopt()``,
``s.scope()`` (``async with s.scope():``), ``s.pipeline()``.

Many tasks may use one session at once: each call writes its request as soon as it is
made, so the calls of concurrent tasks travel pipelined on the one connection, and each
task gets its own answer (the server answers in order, and every answer is checked against
the request it is due for, as in the blocking session).  Events are read as they arrive and
their callbacks run on the event loop; a callback that is a coroutine function is run as a
task.  A call that may raise events returns after its own events' callbacks ran, as in the
blocking session.  A call whose task is cancelled gives back, when its answer comes, the
references the answer holds.

A session belongs to the event loop it was connected on.
"""

import asyncio
import functools
import socket
import ssl
import sys
import time
import traceback

from . import errors
from ._codec import codec
from ._core import CLIENT_NAME, GOODBYE, HELLO, MAX_REDIRECTS, SessionCore, _Exchange
from ._gc import GC, AsyncGarbageList
from ._ops import OPS
from ._ref import AsyncRef
from ._session import Pipeline as _BlockingPipeline
from ._session import collect_results, finish_step
from ._trace import Tracemalloc
from ._transport import parse_url
from ._weak import AsyncWeakrefModule, run_atexit_finalizers

__all__ = ["connect", "Session", "Pipeline"]


def connect(url=None, token=None, *, resume=None, timeout=None, connect_timeout=10.0,
            resume_wait=2.0, client_name=CLIENT_NAME, resume_timeout=None, ssl_context=None,
            ssl_ca_certs=None, ssl_certfile=None, ssl_keyfile=None):
    """Connects to heapd and opens (or resumes) a session, on the running event loop.

    The arguments are :func:`heapd.connect`'s.  ``await`` the result for the
    :class:`Session`, or use it as an asynchronous context manager, which says goodbye at
    the end of the block::

        s = await heapd.asyncio.connect(url)
        async with heapd.asyncio.connect(url) as s: ...
    """
    session = Session(url, token, timeout=timeout, connect_timeout=connect_timeout,
                      resume_wait=resume_wait, client_name=client_name,
                      resume_timeout=resume_timeout, ssl_context=ssl_context,
                      ssl_ca_certs=ssl_ca_certs, ssl_certfile=ssl_certfile,
                      ssl_keyfile=ssl_keyfile)
    return _Connecting(session, resume)


class _Connecting:
    """What :func:`connect` returns: awaitable, and an async context manager."""

    __slots__ = ("_session", "_resume")

    def __init__(self, session, resume):
        self._session = session
        self._resume = resume

    async def _open(self):
        await self._session._open(self._resume)
        return self._session

    def __await__(self):
        return self._open().__await__()

    async def __aenter__(self):
        return await self._open()

    async def __aexit__(self, *exc):
        await self._session.close()


class _Protocol(asyncio.Protocol):
    """Hands one connection's bytes and its end to the session (while it is its current
    connection: a stale one's are ignored)."""

    def __init__(self, session):
        self._session = session
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        s = self._session
        if s._transport is self.transport and self.transport is not None:
            s._on_data(data)

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc):
        s = self._session
        if s._transport is self.transport and self.transport is not None:
            s._on_lost(exc)
        self.transport = None

    def pause_writing(self):
        self._session._paused = True

    def resume_writing(self):
        s = self._session
        s._paused = False
        waiters, s._drain_waiters = s._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)


class Session(SessionCore):
    """One session with heapd, for asyncio (see the module docstring).

    Its attributes are the blocking :class:`heapd.Session`'s; its methods that talk to the
    server are coroutines of the same names.
    """

    _is_async = True
    _ref_class = AsyncRef

    def __init__(self, url=None, token=None, *, timeout=None, connect_timeout=10.0,
                 resume_wait=2.0, client_name=CLIENT_NAME, resume_timeout=None,
                 ssl_context=None, ssl_ca_certs=None, ssl_certfile=None, ssl_keyfile=None):
        self._loop = None
        self._transport = None
        self._reader = None
        self._hello_waiter = None
        self._paused = False
        self._drain_waiters = []
        self._tasks = set()  # callback tasks and background flushes, kept alive
        self._flush_pending = False
        self._events_seen = 0
        self._event_flag = None
        self._room_waiters = []  # calls waiting for the in-flight count to fall (resuming)
        self._resume_task = None  # the task resuming after a drop (resume_timeout)
        self._init_state(url, token, timeout, connect_timeout, resume_wait, client_name,
                         resume_timeout,
                         tls=dict(ssl_context=ssl_context, ssl_ca_certs=ssl_ca_certs,
                                  ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile))
        self.gc = AsyncGC(self)
        self.tracemalloc = AsyncTracemalloc(self)
        self.weakref = AsyncWeakrefModule(self)

    # -- connection lifetime ---------------------------------------------------------------

    async def _open(self, resume):
        deadline = time.monotonic() + self._resume_wait
        while True:
            try:
                return await self._hello(resume)
            except errors.SessionBusy:
                if not resume or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.05)

    async def _hello(self, resume, resend=False):
        """Connects and says hello, following redirects (EMOVED) to the node that owns the
        session, at most MAX_REDIRECTS; with ``resend`` (resuming after a drop) the requests
        in flight are kept, to be re-sent, and a failure only closes the new connection."""
        url = self.url
        for hops in range(MAX_REDIRECTS + 1):
            try:
                await self._hello_at(url, resume, resend)
            except errors.Moved as exc:
                url = self._redirected(exc, hops)
                continue
            self.node_url = url
            return

    async def _hello_at(self, url, resume, resend):
        args = self._hello_args(resume, resend)
        loop = asyncio.get_running_loop()
        family, address = parse_url(url)
        protocol = _Protocol(self)
        try:
            if family == socket.AF_UNIX:
                make = loop.create_unix_connection(lambda: protocol, address)
            else:
                ctx = self._ssl_for(url)
                make = loop.create_connection(
                    lambda: protocol, address[0], address[1], ssl=ctx,
                    server_hostname=address[0] if ctx else None)
            transport, _ = await asyncio.wait_for(make, self._connect_timeout)
        except ssl.SSLError as exc:
            raise errors.ConnectionClosed(f"TLS handshake with {url} failed: {exc}") from exc
        except (OSError, asyncio.TimeoutError) as exc:
            raise errors.ConnectionClosed(f"cannot connect to {url}: {exc}") from exc
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._loop = loop
        self._transport = transport
        self._reader = codec.reader()
        if not resend:
            self._inflight.clear()
            self._sent.clear()
        self._hello_waiter = loop.create_future()
        try:
            rid = self._new_id()
            transport.write(codec.encode(rid, HELLO.number, args))
            wait = self._timeout if self._timeout is not None else max(self._connect_timeout,
                                                                        10.0)
            try:
                frame = await asyncio.wait_for(self._hello_waiter, wait)
            except asyncio.TimeoutError:
                raise errors.ConnectionClosed("timed out waiting for the hello's answer") \
                    from None
            self._check_hello(frame, rid, self._reader)
            if resend and not self.resumed:
                raise errors.BadReply("the session was not resumed")
        except BaseException:
            self._hello_waiter = None
            if resend:
                self._close_transport()
            else:
                self._drop()
            raise
        self._hello_waiter = None

    @property
    def connected(self):
        """True while the session has a live connection."""
        return self._transport is not None and self._hello_waiter is None

    @property
    def closed(self):
        """True after :meth:`close`: the session is gone from the server."""
        return self._closed

    async def close(self):
        """Says goodbye: the server ends the session and frees its heap (see
        :meth:`heapd.Session.close`)."""
        if self._closed:
            return
        task = self._resume_task
        if task is not None and not task.done():
            # Resuming after a drop: the goodbye goes to the resumed session.
            await asyncio.shield(task)
        if self._finalizers_alive and self.connected:
            run_atexit_finalizers(self)  # as weakref.finalize's run at exit
        self._deferred.clear()
        try:
            if self.connected:
                await self._do(GOODBYE, GOODBYE.args(), None)
        except errors.Error:
            pass
        finally:
            self._closed = True
            self._drop()

    async def detach(self):
        """Drops the connection but keeps the session on the server; returns
        ``(session_id, resume_token)`` (see :meth:`heapd.Session.detach`)."""
        self._require_open()
        if self.connected:
            await self.flush()
        self._detached = True
        self._drop()
        return self.session_id, self.resume_token

    async def reconnect(self):
        """Resumes this session on a new connection (see :meth:`heapd.Session.reconnect`)."""
        if self._closed:
            raise errors.ConnectionClosed("the session was closed (goodbye)")
        self._drop()
        await self._open((self.session_id, self.resume_token))
        self._detached = False

    def _drop(self, error=None):
        """Closes the connection; the calls still waiting fail with ``error`` (by default
        :class:`heapd.ConnectionClosed`)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        self._pending_resume = False
        self._unrun_releases()
        waiting = {id(e[3]): e[3] for e in self._inflight if e[3] is not None}
        self._inflight.clear()
        self._sent.clear()
        self._reader = None
        self._wake_room()
        if error is None:
            error = errors.ConnectionClosed("connection dropped")
        for ex in waiting.values():
            w = ex.waiter
            if w is not None and not w.done():
                w.set_exception(error)
        if self._hello_waiter is not None and not self._hello_waiter.done():
            self._hello_waiter.set_exception(error)
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_exception(error)

    def _protocol_error(self, text):
        exc = errors.BadReply(text + "; connection dropped")
        self._drop(exc)
        raise exc

    def _last_word(self, code, message, name):
        self._ended = True
        exc = errors.error_from_status(code, message, name)
        self._lost(code, exc)
        raise exc

    # -- resuming (resume_timeout; see heapd.Session) -------------------------------------------

    def _close_transport(self, error=None):
        """Closes the connection only; a hello waiting on it fails with ``error``."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()
        self._reader = None
        w = self._hello_waiter
        if w is not None and not w.done():
            w.set_exception(error or errors.ConnectionClosed("connection dropped"))

    def _lost(self, code=None, error=None):
        """The connection is gone: resumed in a task when resume_timeout allows it (the calls
        in flight keep waiting, to be answered after the re-send), else dropped."""
        if not self._can_resume(code):
            self._drop(error)
            return
        self._pending_resume = True
        self._close_transport(error)
        task = self._resume_task
        if self._loop is not None and (task is None or task.done()):
            why = str(error) if error is not None else "connection lost"
            self._resume_task = self._loop.create_task(self._resume(why))

    async def _resume(self, why):
        """Connects again, resumes with Hello.resend, re-sends what is unanswered (backing
        off from 10 ms to 1 s for up to resume_timeout seconds); on failure every call in
        flight fails with ConnectionClosed."""
        deadline = time.monotonic() + self._resume_timeout
        backoff = 0.01
        while True:
            if self._closed or not self._pending_resume:
                return
            try:
                await self._hello((self.session_id, self.resume_token), resend=True)
                break
            except (errors.ConnectionClosed, errors.SessionBusy, errors.ShuttingDown,
                    errors.TooMany) as exc:
                if time.monotonic() >= deadline:
                    self._drop(errors.ConnectionClosed(f"{why}; resuming failed: {exc}"))
                    return
                await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, 1.0)
            except errors.Error as exc:  # gone (ENOSESSION), refused (EAUTH), not heapd
                self._drop(exc)
                return
        self.resumes += 1
        self._pending_resume = False
        pieces = self._unanswered()
        self._sent.clear()
        self._sent.extend(pieces)
        if pieces:
            self._transport.write(b"".join(data for _first, _count, data in pieces))

    async def _room(self, n):
        """Resuming: waits until n more requests leave at most limits.replay_window
        unanswered (a call larger than the window waits for all the others)."""
        limit = self.limits.replay_window
        while (self._resume_timeout and limit and self._inflight
               and len(self._inflight) + n > limit):
            w = self._loop.create_future()
            self._room_waiters.append(w)
            await w

    def _wake_room(self):
        waiters, self._room_waiters = self._room_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _require_open(self):
        if self._closed:
            raise errors.ConnectionClosed("the session is closed")

    def __del__(self):
        transport = getattr(self, "_transport", None)
        if transport is not None and not self._closed:
            import warnings
            warnings.warn(f"unclosed heapd session {self.session_id}", ResourceWarning,
                          source=self)
            try:
                transport.abort()
            except Exception:  # noqa: BLE001 - the loop may be gone
                pass

    def __repr__(self):
        state = "closed" if self._closed else ("connected" if self.connected else "detached")
        return f"<heapd.asyncio.Session {self.session_id} {state} {self.url}>"

    # -- bytes in ------------------------------------------------------------------------

    def _on_data(self, data):
        reader = self._reader
        reader.feed(data)
        while self._transport is not None:
            try:
                frame = reader.gets()
            except ValueError as exc:
                self._drop(errors.BadReply(f"undecodable frame from the server: {exc}; "
                                           f"connection dropped"))
                return
            if frame is None:
                return
            waiter = self._hello_waiter
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(frame)
                return  # the rest is read once the hello is checked
            try:
                ex = self._settle(frame)
            except errors.Error:
                return  # the connection was dropped and the calls waiting told why
            if self._events:
                self._dispatch_events()
            if ex is not None and ex.answered == ex.expected:
                w = ex.waiter
                if not w.done():
                    w.set_result(None)
        if self._room_waiters:
            self._wake_room()

    def _on_lost(self, exc):
        reader = self._reader
        text = "server closed the connection"
        if reader is not None and reader.pending:
            text += f" in the middle of a frame ({reader.pending} bytes of it received)"
        if exc is not None:
            text += f": {exc}"
        self._lost(None, errors.ConnectionClosed(text))

    # -- calls ---------------------------------------------------------------------------

    def _submit(self, calls):
        """Writes ``calls`` (after the prelude) and returns their :class:`_Exchange`."""
        self._require_open()
        if not self.connected and not self._pending_resume:
            raise errors.ConnectionClosed("not connected (call reconnect() to resume the "
                                          "session)")
        ex = _Exchange([op for op, _ in calls])
        ex.waiter = self._loop.create_future()
        frames, entries = self._plan(calls, ex)
        self._inflight.extend(entries)
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if self._resume_timeout:
            self._note_sent(entries[0][0], len(entries), data)
        if self.connected and not self._pending_resume:
            self._transport.write(data)
        # else: resuming; the resume re-sends it with the rest
        return ex

    async def _wait(self, ex):
        try:
            if self._paused:
                await self._drain()
            if self._timeout is None:
                await ex.waiter
            else:
                try:
                    await asyncio.wait_for(asyncio.shield(ex.waiter), self._timeout)
                except asyncio.TimeoutError:
                    # A reply may still come and would answer the wrong request: the
                    # stream can no longer be trusted.
                    ex.waiter.cancel()
                    exc = errors.ConnectionClosed("timed out waiting for the server")
                    self._drop(exc)
                    raise exc from None
        except asyncio.CancelledError:
            # Whether or not the answers are all in, nobody will take them now: the
            # references they hold are given back (now, or when they come).
            self._abandon(ex)
            raise

    async def _drain(self):
        w = self._loop.create_future()
        self._drain_waiters.append(w)
        await w

    async def _do(self, op, args, finish):
        if self._resume_timeout:
            await self._room(1)
        ex = self._submit(((op, args),))
        await self._wait(ex)
        value = ex.out[0]
        if isinstance(value, errors.Error):
            raise value
        return finish(self, value) if finish is not None else value

    async def _drive(self, gen):
        send = None
        exc = None
        while True:
            try:
                calls = gen.throw(exc) if exc is not None else gen.send(send)
            except StopIteration as stop:
                return stop.value
            exc = None
            try:
                if self._resume_timeout:
                    await self._room(len(calls))
                ex = self._submit([(op, args) for op, args, _ in calls])
                await self._wait(ex)
                send = finish_step(self, calls, ex)
            except BaseException as e:  # noqa: B902 - thrown into the generator
                exc = e

    async def _done(self, value):
        return value

    def _garbage_view(self):
        return AsyncGarbageList(self.gc)

    def pipeline(self, raise_on_error=True):
        """A :class:`Pipeline`: ``async with s.pipeline() as p:`` queues calls and sends them
        in one write when the block ends (see :meth:`heapd.Session.pipeline`)."""
        return Pipeline(self, raise_on_error)

    # -- events ------------------------------------------------------------------------------

    def _dispatch_events(self):
        n = len(self._events)
        super()._dispatch_events()
        self._events_seen += n
        if n and self._event_flag is not None:
            self._event_flag.set()

    def _run_callback(self, callback, *args):
        """Runs an event callback on the loop; a coroutine it returns runs as a task.  An
        exception is printed and ignored, as in the blocking session."""
        try:
            result = callback(*args)
        except Exception:
            _print_callback_error(callback)
            return
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._callback_done, callback))

    def _callback_done(self, callback, task):
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            try:
                raise task.exception()
            except Exception:
                _print_callback_error(callback)

    async def poll(self, timeout=0.0):
        """Waits up to ``timeout`` seconds for an event; returns how many were handled
        meanwhile.  Events are handled as they arrive in an asyncio session: this is for a
        program that wants to wait for them."""
        self._require_open()
        if not self.connected:
            raise errors.ConnectionClosed("not connected")
        start = self._events_seen
        if self._event_flag is None:
            self._event_flag = asyncio.Event()
        self._event_flag.clear()
        try:
            await asyncio.wait_for(self._event_flag.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(0)
        return self._events_seen - start

    def _eager_flush(self):
        """A Ref freed while death callbacks are registered: flush from the loop soon
        (``__del__`` may run in any thread, and cannot await)."""
        loop = self._loop
        if loop is None or self._flush_pending:
            return
        self._flush_pending = True
        try:
            loop.call_soon_threadsafe(self._flush_soon)
        except RuntimeError:  # the loop is closed
            self._flush_pending = False

    def _flush_soon(self):
        self._flush_pending = False
        if self._deferred and self.connected and not self._closed:
            task = self._loop.create_task(self._flush_quietly())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush_quietly(self):
        try:
            await self.flush()
        except errors.Error:
            pass


def _print_callback_error(callback):
    print(f"Exception ignored in heapd event callback {callback!r}:", file=sys.stderr)
    traceback.print_exc(file=sys.stderr)


def _coroutine(method):
    """``method`` (which returns an awaitable in an asyncio session) as a coroutine function
    of the same name and docstring."""
    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        return await method(self, *args, **kwargs)
    return wrapper


_SESSION_CALLS = ("ping", "flush", "alloc", "alloc_many", "release_many", "getrefcount",
                  "getsizeof", "share", "release", "get_slot", "set_slot", "write", "read",
                  "info", "stats", "charges", "server_stats", "list_sessions", "kill_session")
for _name in _SESSION_CALLS:
    setattr(Session, _name, _coroutine(getattr(SessionCore, _name)))


class AsyncGC(GC):
    """``s.gc`` of an asyncio session: :class:`heapd.GC`'s methods as coroutines;
    :meth:`iter_objects` is an asynchronous generator (``async for ref in
    s.gc.iter_objects():``), :attr:`garbage` an :class:`heapd._gc.AsyncGarbageList`."""

    async def iter_objects(self, generation=None, page_size=0):
        session = self._owner
        op = OPS["gc_get_objects"]
        cursor = 0
        try:
            while True:
                args = op.args(generation=generation, cursor=cursor, max=page_size)
                handles, cursor = await session._do(op, args, None)
                page = session._adopt_all(handles)
                page.reverse()
                while page:
                    yield page.pop()
                if not cursor:
                    return
        finally:
            if cursor:
                session._defer("gc_close_cursor", cursor=cursor)


for _name in ("collect", "enable", "disable", "isenabled", "get_count", "get_threshold",
              "set_threshold", "get_stats", "freeze", "unfreeze", "get_freeze_count",
              "is_tracked", "get_referrers", "get_referents", "get_objects", "set_debug",
              "get_debug", "clear_garbage", "set_mode", "get_mode", "get_mode_info"):
    setattr(AsyncGC, _name, _coroutine(getattr(GC, _name)))


class AsyncTracemalloc(Tracemalloc):
    """``s.tracemalloc`` of an asyncio session: :class:`heapd.Tracemalloc`'s methods as
    coroutines."""


for _name in ("start", "stop", "is_tracing", "clear_traces", "get_traced_memory",
              "reset_peak", "take_snapshot", "get_tracemalloc_memory", "get_object_traceback"):
    setattr(AsyncTracemalloc, _name, _coroutine(getattr(Tracemalloc, _name)))


class Pipeline(_BlockingPipeline):
    """A pipeline of an asyncio session: calls are queued as in :class:`heapd.Pipeline`
    (plain methods, each returning the pipeline); ``await p.execute()`` or the end of an
    ``async with`` block sends them."""

    def __enter__(self):
        raise TypeError("use async with for a pipeline of an asyncio session")

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.reset()
        elif self._calls:
            await self.execute()

    async def execute(self, raise_on_error=None):
        """Sends the queued calls in one write and returns their results, in order."""
        calls, self._calls = self._calls, []
        raise_first = self._raise if raise_on_error is None else raise_on_error
        if not calls:
            self.results = []
            return self.results
        session = self._session
        if session._resume_timeout:
            await session._room(len(calls))
        ex = session._submit([(op, args) for op, args, _ in calls])
        await session._wait(ex)
        self.results, first = collect_results(session, calls, ex)
        if first is not None and raise_first:
            raise first
        return self.results
