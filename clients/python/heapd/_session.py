# SPDX-License-Identifier: MIT
"""The blocking session: one connection to heapd, one managed heap, and calls that wait.

:class:`Session` is :class:`_core.SessionCore` (the protocol's rules and every operation)
over a blocking socket.  A call encodes its requests (after the queued releases: the
prelude), writes them in one ``sendall`` and reads frames until every one of them is
answered, checking each response against the request it answers; events read on the way
are dispatched before the call returns, in the thread that made it.  Pipelines
(:meth:`Session.pipeline`) and the ``*_many`` calls send many requests in one write the
same way; a pipeline longer than the window (:data:`WINDOW_FRAMES` requests or
:data:`WINDOW_BYTES` bytes in flight) reads responses before it writes more, so neither
side's socket buffer can fill up and stall both.

A session may be used from several threads: every exchange holds the session's lock.
"""

__all__ = ["connect", "Session", "Pipeline"]

import socket
import threading
import time
import warnings

from . import errors
from ._codec import codec
from ._core import (CLIENT_NAME, DECREF, GOODBYE, MAX_REDIRECTS, PING, _PING_ARGS, SessionCore,
                    _Chunk, _Exchange)
from ._gc import GC, GarbageList
from ._trace import Tracemalloc
from ._transport import open_socket
from ._weak import WeakrefModule, run_atexit_finalizers

#: In-flight requests a pipeline keeps at most before it reads responses.
WINDOW_FRAMES = 4096
#: In-flight request bytes a pipeline keeps at most before it reads responses.
WINDOW_BYTES = 1 << 20

_RECV = 1 << 18


def connect(url=None, token=None, *, resume=None, timeout=None, connect_timeout=10.0,
            resume_wait=2.0, client_name=CLIENT_NAME, resume_timeout=None, ssl_context=None,
            ssl_ca_certs=None, ssl_certfile=None, ssl_keyfile=None):
    """Connects to heapd and opens (or resumes) a session.

    Args:
        url: ``tcp://host:port``, ``host:port``, ``unix:/path`` or ``/path`` (the forms of
            ``heapctl --connect``); default ``$HEAPD_URL``, else ``tcp://127.0.0.1:7420``.
        token: the access token, when the server requires one; default ``$HEAPD_TOKEN``.
        resume: ``(session_id, resume_token)`` of a detached session to resume; its heap
            and the client references it held are as they were left.
        timeout: seconds to wait for any one response (``None``: forever).  When it
            expires the connection is dropped (the session can be resumed).
        connect_timeout: seconds to wait for the connection itself.
        resume_wait: seconds to keep retrying a resume while the server still sees the
            session attached to its old connection (it notices a drop a moment later).
        client_name: shown in the server's logs and session list.
        ssl_context: for a ``tls://host:port`` URL, the :class:`ssl.SSLContext` to use.
        ssl_ca_certs, ssl_certfile, ssl_keyfile: for a ``tls://`` URL without
            ``ssl_context`` (redis-py's names): the CA file (PEM) the server's certificate
            must chain to (default ``$HEAPD_CACERT``, else the system's CAs), and a client
            certificate with its key for a server that asks for one (mutual TLS; default
            ``$HEAPD_CERT``, ``$HEAPD_KEY``).  The server's certificate must name the URL's
            host.  TLS arguments with another URL are a :class:`ValueError`.
        resume_timeout: seconds to keep resuming the session after its connection drops or
            the server restarts (``None``: never; the call then raises ConnectionClosed).
            With it, a lost connection is connected again (backing off from 10 ms to 1 s)
            and the session resumed with ``Hello.resend``, and every request left
            unanswered is re-sent with its id: the server answers those it ran from its
            replay window, so none runs twice, and the call returns as if nothing
            happened.  :attr:`Session.resumes` counts the resumes.  At most
            ``limits.replay_window`` requests are left unanswered at a time.

    Returns:
        A :class:`Session`, which is also a context manager: leaving the ``with``
        block says goodbye, which ends the session and frees its heap.

    Raises:
        heapd.BadReply (a :class:`heapd.ProtocolError`): the server's answer to the hello is
            not heapd's (version, session id, token, limits).
        heapd.ConnectionClosed (a :class:`ConnectionError`): no connection, or it closed.
    """
    return Session(url, token, resume=resume, timeout=timeout,
                   connect_timeout=connect_timeout, resume_wait=resume_wait,
                   client_name=client_name, resume_timeout=resume_timeout,
                   ssl_context=ssl_context, ssl_ca_certs=ssl_ca_certs,
                   ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)


class Session(SessionCore):
    """One session with heapd: a managed heap on the server, and the client's references.

    Create it with :func:`heapd.connect`.  Its parts mirror the modules Python users
    know: :meth:`alloc` creates objects, :meth:`getrefcount` and :meth:`getsizeof` are
    ``sys``'s, :attr:`gc` is the ``gc`` module, :meth:`weakref` is ``weakref.ref`` and
    :attr:`tracemalloc` is ``tracemalloc``.  Every method of :class:`Ref` has a twin here
    that takes the Ref first (``s.share(ref)``, ``s.get_slot(ref, i)``, ...), which is
    how a :meth:`pipeline` names them.

    Attributes are those of :class:`_core.SessionCore`.
    """

    def __init__(self, url=None, token=None, *, resume=None, timeout=None,
                 connect_timeout=10.0, resume_wait=2.0, client_name=CLIENT_NAME,
                 resume_timeout=None, ssl_context=None, ssl_ca_certs=None, ssl_certfile=None,
                 ssl_keyfile=None):
        self._lock = threading.RLock()
        self._busy = 0  # exchanges in progress (in this thread: the lock is held)
        self._sock = None
        self._reader = None
        self._init_state(url, token, timeout, connect_timeout, resume_wait, client_name,
                         resume_timeout,
                         tls=dict(ssl_context=ssl_context, ssl_ca_certs=ssl_ca_certs,
                                  ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile))
        self._open(resume)

    # -- connection lifetime ---------------------------------------------------------------

    def _open(self, resume):
        """Connects and says hello (creating, or resuming ``(session_id, resume_token)``).

        A resume that finds the session still attached (:class:`heapd.SessionBusy`) is
        retried for ``resume_wait`` seconds."""
        deadline = time.monotonic() + self._resume_wait
        while True:
            try:
                return self._hello(resume)
            except errors.SessionBusy:
                # The server has not yet seen the old connection go: a drop is noticed
                # when its socket reports the close, a moment after the client's close().
                if not resume or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _hello(self, resume, resend=False):
        """Opens a connection and exchanges hello on it, following redirects (EMOVED) to the
        node that owns the session, at most MAX_REDIRECTS.  With ``resend`` (resuming after
        a drop) the requests in flight stay, to be re-sent."""
        url = self.url
        for hops in range(MAX_REDIRECTS + 1):
            try:
                self._hello_at(url, resume, resend)
            except errors.Moved as exc:
                url = self._redirected(exc, hops)
                continue
            self.node_url = url
            return

    def _hello_at(self, url, resume, resend):
        args = self._hello_args(resume, resend)
        sock = open_socket(url, self._connect_timeout, self._ssl_for(url))
        reader = codec.reader()
        try:
            sock.settimeout(self._timeout if self._timeout is not None else
                            max(self._connect_timeout, 10.0))
            rid = self._new_id()
            sock.sendall(codec.encode(rid, 3, args))
            frame = None
            while frame is None:
                try:
                    frame = reader.gets()
                except ValueError as exc:
                    raise errors.BadReply(f"undecodable answer to the hello: {exc}") from None
                if frame is not None:
                    break
                try:
                    chunk = sock.recv(_RECV)
                except socket.timeout:
                    raise errors.ConnectionClosed("timed out waiting for the hello's "
                                                  "answer") from None
                except OSError as exc:
                    raise errors.ConnectionClosed(f"receive failed: {exc}") from exc
                if not chunk:
                    raise errors.ConnectionClosed(_closed_text(reader, "before answering "
                                                               "the hello"))
                reader.feed(chunk)
            self._check_hello(frame, rid, reader)
            sock.settimeout(self._timeout)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._reader = reader
        self._pending_resume = False
        if resend:
            if not self.resumed:
                self._drop()
                raise errors.BadReply("the session was not resumed")
        else:
            self._inflight.clear()
            self._sent.clear()

    @property
    def connected(self):
        """True while the session has a live connection."""
        return self._sock is not None

    @property
    def closed(self):
        """True after :meth:`close`: the session is gone from the server."""
        return self._closed

    def close(self):
        """Says goodbye: the server ends the session and frees its heap.

        Every :class:`Ref` of the session becomes unusable.  Closing twice, or closing
        a session whose connection is lost, is allowed (a lost session is left to the
        server, which frees it after its linger time).
        """
        with self._lock:
            if self._closed:
                return
            if self._finalizers_alive and self.connected:
                run_atexit_finalizers(self)  # as weakref.finalize's run at exit
            self._deferred.clear()  # the heap goes with the session
            try:
                if self.connected:
                    self._exchange([(GOODBYE, GOODBYE.args())])
            except errors.Error:
                pass  # the connection is gone: the server ends the session after linger
            finally:
                self._closed = True
                self._drop()

    def detach(self):
        """Drops the connection but keeps the session on the server, for resuming.

        Queued releases are sent first.  Returns ``(session_id, resume_token)``, to
        pass as ``resume=`` to :func:`connect` (in this process or another, before the
        server's linger time runs out), or call :meth:`reconnect` on this object.
        """
        with self._lock:
            self._require_open()
            if self.connected:
                self.flush()
            self._detached = True
            self._drop()
            return self.session_id, self.resume_token

    def reconnect(self):
        """Resumes this session on a new connection, after :meth:`detach` or a lost one.

        The session's objects and references are as they were, so every :class:`Ref`
        of this object stays valid.
        """
        with self._lock:
            if self._closed:
                raise errors.ConnectionClosed("the session was closed (goodbye)")
            self._drop()
            self._open((self.session_id, self.resume_token))
            self._detached = False

    def _drop(self):
        """Closes the connection without a goodbye and forgets the requests in flight.

        Releases still in flight when the server ended the connection itself (its last
        word) were never run: they wait for the next connection."""
        self._close_transport()
        self._pending_resume = False
        self._unrun_releases()
        self._inflight.clear()
        self._sent.clear()

    def _close_transport(self):
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        self._reader = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        sock = getattr(self, "_sock", None)
        if sock is not None and not self._closed:
            warnings.warn(f"unclosed heapd session {self.session_id}", ResourceWarning,
                          source=self)
            try:
                sock.close()
            except OSError:
                pass

    def __repr__(self):
        state = "closed" if self._closed else ("connected" if self.connected else "detached")
        return f"<heapd.Session {self.session_id} {state} {self.url}>"

    def _require_open(self):
        if self._closed:
            raise errors.ConnectionClosed("the session is closed")

    # -- exchanges -------------------------------------------------------------------------

    def _exchange(self, calls, ex=None):
        """Sends ``calls`` (``[(op, args)]``) after the prelude and reads until every one is
        answered.  Returns the :class:`_Exchange`, whose ``out`` holds each call's decoded
        result or its :class:`heapd.Error`.  Raises only what breaks the exchange itself
        (an argument that cannot be encoded, before anything is sent; a lost connection;
        a bad reply); its answered results are then released."""
        with self._lock:
            self._require_open()
            if self._sock is None and self._can_resume():
                self._resume("the connection was lost")
            if self._sock is None:
                raise errors.ConnectionClosed(
                    "not connected (call reconnect() to resume the session)")
            if ex is None:
                ex = _Exchange([op for op, _ in calls])
            self._busy += 1
            try:
                if self._inflight:
                    # Answers still owed to an exchange whose caller gave up: take them
                    # first, so that the references they hold go back in this prelude.
                    self._run(())
                frames, entries = self._plan(calls, ex)
            except BaseException:
                self._busy -= 1
                raise
            try:
                self._inflight.extend(entries)
                self._run(frames)
            except BaseException:
                self._abandon(ex)
                raise
            finally:
                self._busy -= 1
                self._dispatch_events()
            return ex

    def _run(self, frames):
        """Writes ``frames`` (their entries are the tail of the in-flight queue) within the
        window, and reads until the queue is empty.  With resume_timeout, a lost connection
        is resumed and the loop goes on where it was (see :meth:`_resume`)."""
        unsent = sum(f.count if f.__class__ is _Chunk else 1 for f in frames)
        if not self._resume_timeout:
            self._pump(frames, [0, unsent, 0])
            return
        progress = [0, unsent, self._next_id - unsent]
        while True:
            try:
                self._pump(frames, progress)
                return
            except (errors.ConnectionClosed, errors.ShuttingDown, errors.IdleTimeout) as exc:
                if not self._pending_resume:
                    raise
                self._resume(str(exc))

    def _pump(self, frames, progress):
        """The loop of :meth:`_run`.  ``progress`` is ``[frames sent, requests unsent, id of
        the next to send]``, kept up to date for a resume to go on from.

        The loop settles the common response (the success of the call at the head of the
        queue) itself and hands every other frame to ``_settle``."""
        inflight = self._inflight
        reader = self._reader
        gets = reader.gets
        n = len(frames)
        i, unsent, next_rid = progress
        window = self._replay_limit(WINDOW_FRAMES)
        keep = self._resume_timeout > 0
        while True:
            if i < n:
                unanswered = len(inflight) - unsent
                if unanswered < window:
                    j, size, count = i, 0, 0
                    while j < n and unanswered + count < window and (
                            size < WINDOW_BYTES or j == i):
                        f = frames[j]
                        size += len(f)
                        count += f.count if f.__class__ is _Chunk else 1
                        j += 1
                    data = frames[i] if j == i + 1 else b"".join(frames[i:j])
                    if keep:
                        # Kept before the write: a write cut short may have reached the
                        # server, and a re-send of what ran is answered, not run.
                        self._note_sent(next_rid, count, data)
                        next_rid += count
                        progress[:] = (j, unsent - count, next_rid)
                    self._send(data)
                    unsent -= count
                    i = j
                    continue
            if not inflight:
                return
            try:
                frame = gets()
            except ValueError as exc:
                self._drop()
                raise errors.BadReply(f"undecodable frame from the server: {exc}; "
                                      f"connection dropped") from None
            if frame is None:
                self._receive()
                continue
            head = inflight[0]
            if (frame[0] == 1 and frame[1] == head[0] and not frame[2] and head[2] == 0
                    and frame[5] == head[1].resnum):
                ex = head[3]
                if not ex.abandoned:
                    inflight.popleft()
                    ex.out[head[4]] = frame[6]
                    ex.missing -= 1
                    ex.answered += 1
                    continue
            self._settle(frame)

    def _receive(self, quiet_timeout=False):
        """Reads more bytes from the socket into the reader; returns False when none came
        (a non-blocking socket, or a timeout with ``quiet_timeout``)."""
        try:
            chunk = self._sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return False
        except socket.timeout:
            if quiet_timeout:
                return False
            # A reply may still come later and would then answer the wrong request: the
            # stream can no longer be trusted.
            self._drop()
            raise errors.ConnectionClosed("timed out waiting for the server") from None
        except OSError as exc:
            self._lost()
            raise errors.ConnectionClosed(f"receive failed: {exc}") from exc
        if not chunk:
            text = _closed_text(self._reader)
            self._lost()
            raise errors.ConnectionClosed(text)
        self._reader.feed(chunk)
        return True

    def _send(self, data):
        try:
            self._sock.sendall(data)
        except OSError as exc:
            # The server may have said why before it closed (its last word: idle timeout,
            # shutdown, a kill): read what it left and raise that.
            self._sock.settimeout(0)
            try:
                while True:
                    frame = self._read_frame(final=True)
                    if frame is None:
                        break
                    self._settle(frame)
            except errors.ConnectionClosed:
                pass
            if self._sock is not None:
                self._lost()
            raise errors.ConnectionClosed(f"send failed: {exc}") from exc

    def _resume(self, why):
        """Connects again and resumes the session with ``Hello.resend``, backing off from
        10 ms to 1 s for up to resume_timeout seconds, then re-sends every request left
        unanswered, in order and with its id.  Raises ConnectionClosed (the session's
        requests in flight failing with it) when that does not work out."""
        deadline = time.monotonic() + self._resume_timeout
        backoff = 0.01
        while True:
            try:
                self._hello((self.session_id, self.resume_token), resend=True)
                break
            except (errors.ConnectionClosed, errors.SessionBusy, errors.ShuttingDown,
                    errors.TooMany) as exc:
                # Down, restarting, or not yet aware that the old connection went.
                if time.monotonic() >= deadline:
                    self._drop()
                    raise errors.ConnectionClosed(f"{why}; resuming failed: {exc}") from exc
                time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, 1.0)
            except BaseException:
                self._drop()  # gone (ENOSESSION), refused (EAUTH) or not heapd
                raise
        self.resumes += 1
        pieces = self._unanswered()
        self._sent.clear()
        self._sent.extend(pieces)
        if pieces:
            self._send(b"".join(data for _first, _count, data in pieces))

    def _read_frame(self, final=False, block=True):
        """The next decoded frame; with ``final`` (after a failed send) or without
        ``block``, None when no whole frame has arrived.  A lost connection, a timeout or
        an undecodable frame drops the connection and raises."""
        reader = self._reader
        while True:
            try:
                frame = reader.gets()
            except ValueError as exc:
                self._drop()
                raise errors.BadReply(f"undecodable frame from the server: {exc}; "
                                      f"connection dropped") from None
            if frame is not None:
                return frame
            if not self._receive(quiet_timeout=final or not block):
                return None

    def _do(self, op, args, finish):
        ex = self._exchange(((op, args),))
        value = ex.out[0]
        if isinstance(value, errors.Error):
            raise value
        return finish(self, value) if finish is not None else value

    def _drive(self, gen):
        """Runs a generator of steps (see ``_core``) to its end and returns its value."""
        send = None
        exc = None
        while True:
            try:
                calls = gen.throw(exc) if exc is not None else gen.send(send)
            except StopIteration as stop:
                return stop.value
            exc = None
            try:
                send = self._step(calls)
            except BaseException as e:  # noqa: B902 - thrown into the generator
                exc = e

    def _step(self, calls):
        """Runs one step's calls ``[(op, args, finish)]``; returns their finished results or
        raises the first failure (after giving back what the others took)."""
        ex = self._exchange([(op, args) for op, args, _ in calls])
        return finish_step(self, calls, ex)

    def _done(self, value):
        return value

    def _garbage_view(self):
        return GarbageList(self.gc)

    def _eager_flush(self):
        """A Ref freed while death callbacks are registered: send its release now, unless
        a call is in progress here or in another thread (then it goes with the next)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._busy or self._sock is None or self._closed:
                return
            try:
                self._do(PING, _PING_ARGS, None)
            except Exception:  # noqa: BLE001 - __del__ has no caller to raise to
                pass
        finally:
            self._lock.release()

    # -- events ------------------------------------------------------------------------------

    def poll(self, timeout=0.0):
        """Reads the events that have arrived (waiting up to ``timeout`` seconds for the
        first) and runs their callbacks.  Returns how many events were handled.

        Calls on the session do this by themselves; ``poll`` is for a client that wants
        events while it makes no calls.
        """
        with self._lock:
            self._require_open()
            if self._sock is None:
                raise errors.ConnectionClosed("not connected")
            wait = timeout
            try:
                while True:
                    self._sock.settimeout(wait)
                    try:
                        frame = self._read_frame(block=False)
                    finally:
                        if self._sock is not None:
                            self._sock.settimeout(self._timeout)
                    if frame is None:
                        break
                    self._settle(frame)
                    wait = 0.0
            finally:
                count = len(self._events)
                self._dispatch_events()
            return count

    # -- pipelines -----------------------------------------------------------------------

    def pipeline(self, raise_on_error=True):
        """A :class:`Pipeline`: calls queued in a ``with`` block go out in one write when
        it ends, and their results come back in order (``p.results``)::

            with s.pipeline() as p:
                for _ in range(1000):
                    p.alloc(size=64)
            refs = p.results

        ``raise_on_error`` (as redis-py's ``execute``): raise the first failure when the
        pipeline runs; False puts each failure in the results as an exception object.
        """
        return Pipeline(self, raise_on_error)


def _closed_text(reader, when=""):
    pending = reader.pending
    text = "server closed the connection"
    if when:
        text += f" {when}"
    if pending:
        text += f" in the middle of a frame ({pending} bytes of it received)"
    return text


def finish_step(session, calls, ex):
    """The finished results of one step (see ``Session._step``)."""
    out = ex.out
    first = None
    for i, value in enumerate(out):
        if isinstance(value, errors.Error):
            if first is None:
                first = value
                _note(value, i, calls[i][0], len(calls))
    if first is not None:
        for (op, _args, _finish), value in zip(calls, out):
            if not isinstance(value, errors.Error):
                session._release_result(op, value)
        raise first
    return [finish(session, v) if finish is not None else v
            for (_op, _args, finish), v in zip(calls, out)]


def _note(exc, index, op, count):
    if count > 1 and hasattr(exc, "add_note"):
        exc.add_note(f"(call {index + 1} of {count}: {op.name})")


class Pipeline(SessionCore):
    """Calls queued and sent in one write, results in order (:meth:`Session.pipeline`).

    A pipeline has the session's methods (``alloc``, ``share(ref)``, ``release(ref)``,
    ``get_slot(ref, i)``, ``set_slot(ref, i, target)``, ``read``, ``write``, ``info``,
    ``getrefcount``, ``weakref``, ``stats``, ``ping``, ``p.gc.collect()``, ...), each of
    which queues its request and returns the pipeline, so calls chain as in redis-py.
    :meth:`execute`, or the end of the ``with`` block, sends them and collects the
    results: :attr:`results`, one per call, in order, each what the session's method
    would have returned, or for a failure the exception it would have raised (raised
    instead, after every result is in, when ``raise_on_error`` is true).  Leaving the
    block with an exception sends nothing (releases queued by ``release(ref)`` are then
    kept for the session's next request, as a dropped Ref's are).

    Calls that need several round trips (a read or write larger than one frame, ``gc.
    get_objects()``, ``alloc_many``) cannot be queued: they raise :class:`TypeError`.
    """

    def __init__(self, session, raise_on_error=True):
        self._session = session
        self._root = session
        self._raise = raise_on_error
        self._calls = []
        self.results = None
        self.gc = GC(self, callbacks=session.gc.callbacks)
        self.tracemalloc = Tracemalloc(self)
        self.weakref = WeakrefModule(self)

    def __len__(self):
        return len(self._calls)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.reset()
        elif self._calls:
            self.execute()

    def __repr__(self):
        return f"<heapd.Pipeline of {len(self._calls)} calls on {self._session!r}>"

    @property
    def limits(self):
        return self._session.limits

    @property
    def closed(self):
        return self._session.closed

    @property
    def connected(self):
        return self._session.connected

    def _do(self, op, args, finish):
        self._calls.append((op, args, finish))
        return self

    def _drive(self, gen):
        gen.close()
        raise TypeError("this call needs several round trips and cannot be pipelined")

    def _done(self, value):
        return value

    def _garbage_view(self):
        raise TypeError("gc.garbage cannot be pipelined: read it on the session")

    def _require_open(self):
        self._session._require_open()

    def _defer(self, op, **fields):
        self._session._defer(op, **fields)

    def _adopt(self, handle):
        return self._session._adopt(handle)

    def adopt(self, handle):
        return self._session.adopt(handle)

    def pipeline(self, raise_on_error=True):
        raise TypeError("pipelines do not nest")

    def reset(self):
        """Drops the queued calls without sending them (a queued ``release(ref)`` is kept
        for the session's next request)."""
        calls, self._calls = self._calls, []
        for op, args, _finish in calls:
            if op is DECREF:
                self._session._defer_decref(args.handle)

    def execute(self, raise_on_error=None):
        """Sends the queued calls in one write and returns their results, in order (also
        kept in :attr:`results`); see the class docstring for failures."""
        calls, self._calls = self._calls, []
        raise_first = self._raise if raise_on_error is None else raise_on_error
        if not calls:
            self.results = []
            return self.results
        session = self._session
        ex = session._exchange([(op, args) for op, args, _ in calls])
        self.results, first = collect_results(session, calls, ex)
        if first is not None and raise_first:
            raise first
        return self.results


def collect_results(session, calls, ex):
    """A pipeline's results (each call's finished value, or its exception with a note
    saying which call it was) and its first failure, or None."""
    results = []
    append = results.append
    first = None
    error = errors.Error
    for i, ((op, _args, finish), value) in enumerate(zip(calls, ex.out)):
        if isinstance(value, error):
            _note(value, i, op, len(calls))
            if first is None:
                first = value
            append(value)
        elif finish is None:
            append(value)
        else:
            append(finish(session, value))
    return results, first
