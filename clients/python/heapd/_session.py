"""Sessions: one connection to heapd, one managed heap, and the requests between them.

A :class:`Session` owns the connection (``_transport.py``), numbers the requests, and
reads the server's frames, which are responses and events interleaved on one stream:

* Responses come back in request order, each echoing its request's id.  A call sends
  its request and reads frames until the response with its id arrives.
* Events (an object with a finalizer was freed, a weak reference was cleared, a
  collection started or stopped) are sent by the server right after the response of
  the request that raised them.  The session queues the events it reads and runs the
  matching Python callbacks when the call that read them has its response, i.e.
  *during a call on the session, in the thread that made it*.  So that a call's own
  events are handled before it returns, a call that may raise events (alloc, decref,
  set_slot, gc.collect, ...) is followed on the wire by a ``ping``, pipelined in the
  same write, and the call waits for both.  This costs no extra round trip, and
  happens only while some callback is registered.  :meth:`Session.poll` reads events
  without making a call.
* Releases that cannot be sent when they happen (a :class:`Ref` freed by Python, a
  weak reference or snapshot dropped without ``close()``) are queued and pipelined
  ahead of the next request, in the same write.  Their responses are read and
  checked on the way to the call's own; a failure is reported as a
  :class:`RuntimeWarning`, since there is no caller left to raise it to.

Which events the server sends is chosen from what is registered: ``on_finalize`` or a
per-object finalizer callback, weak references with callbacks, and ``gc.callbacks``.
The session sends ``set_events`` whenever that set changes, ahead of the next request.

A session may be used from several threads: every exchange holds the session's lock.
"""

__all__ = ["connect", "Session", "Scope", "Limits", "Finalized", "PROTOCOL_VERSION"]

import collections
import os
import sys
import threading
import time
import traceback
import warnings
import weakref

from . import errors
from ._gc import GC
from ._proto import heapd_pb2 as pb
from ._ref import ObjectInfo, Ref
from ._trace import Tracemalloc
from ._transport import DEFAULT_URL, Transport
from ._version import __version__
from ._weak import WeakRef

#: The protocol version this client speaks (``Hello.protocol_version``).
PROTOCOL_VERSION = 1

CLIENT_NAME = "heapd-python/" + __version__

#: The session's limits from the server's hello (0 = unlimited).
Limits = collections.namedtuple("Limits", "max_bytes max_objects max_frame_bytes max_read_bytes")

#: What a finalizer callback receives: the freed object's (now stale) handle and its tag.
Finalized = collections.namedtuple("Finalized", "handle tag")

# Event mask bits (proto EventBit): a mask selects event type t with bit 1 << t.
_EV_FINALIZED = 1 << pb.FINALIZED
_EV_WEAKREF_CLEARED = 1 << pb.WEAKREF_CLEARED
_EV_GC = (1 << pb.GC_START) | (1 << pb.GC_STOP)

# Ops that may free objects or run the collector, and so raise events.
_EVENTFUL = frozenset({"alloc", "decref", "set_slot", "gc_collect", "gc_garbage_clear", "batch"})

# Largest read or write chunk when the server does not say (its own default).
_DEFAULT_READ = 1 << 20

# Engine flags (heap.h HD_OBJ_*), as the proto's ObjFlag.
_OBJ_FINALIZER = pb.OBJ_FINALIZER
_OBJ_LEGACY_FINALIZER = pb.OBJ_LEGACY_FINALIZER


def connect(url=None, token=None, *, resume=None, timeout=None, connect_timeout=10.0,
            resume_wait=2.0, client_name=CLIENT_NAME):
    """Connects to heapd and opens (or resumes) a session.

    Args:
        url: ``tcp://host:port`` or ``unix:/path``; default ``$HEAPD_URL``, else
            ``tcp://127.0.0.1:7420``.
        token: the access token, when the server requires one; default
            ``$HEAPD_TOKEN``.
        resume: ``(session_id, resume_token)`` of a detached session to resume; its heap
            and the client references it held are as they were left.
        timeout: seconds to wait for any one response (``None``: forever).  When it
            expires the connection is dropped (the session can be resumed).
        connect_timeout: seconds to wait for the connection itself.
        resume_wait: seconds to keep retrying a resume while the server still sees the
            session attached to its old connection (it notices a drop a moment later).
        client_name: shown in the server's logs and session list.

    Returns:
        A :class:`Session`, which is also a context manager: leaving the ``with``
        block says goodbye, which ends the session and frees its heap.
    """
    return Session(url, token, resume=resume, timeout=timeout,
                   connect_timeout=connect_timeout, resume_wait=resume_wait,
                   client_name=client_name)


def _encode(rid, op, msg):
    """Serializes one ClientFrame holding Request ``rid`` with op field ``op`` set to ``msg``."""
    req = pb.Request(id=rid)
    field = getattr(req, op)
    field.SetInParent()
    if msg is not None:
        field.MergeFrom(msg)
    return pb.ClientFrame(request=req).SerializeToString()


def _status_error(status):
    """The exception mirroring a failed Status."""
    return errors.error_from_status(status.code, status.message, status.name)


def _result(resp, op):
    """The result of a response for ``op``; raises the mirrored exception on failure."""
    if resp.status.code:
        raise _status_error(resp.status)
    if resp.WhichOneof("result") == op:
        return getattr(resp, op)
    return None


class Scope:
    """Releases every reference taken inside a ``with`` block when the block ends.

    This is the stack frame of a Python function made explicit: each :class:`Ref` the
    session hands out while the scope is the innermost one (allocations, shares, slot
    reads, weak reference calls, ``gc`` results) belongs to it, and the ones still
    holding their reference at the end are released together, newest first, in one
    round trip.  Refs released earlier (``release()``, ``del``) are skipped.  Scopes
    nest; each thread has its own stack of them.  To let a reference outlive the block,
    as a function returns a value, pass it to :meth:`keep`::

        def make_pair(s):
            with s.scope() as frame:
                a, b = s.alloc(slots=1), s.alloc(slots=1)
                a[0] = b
                return frame.keep(a)      # b's reference is released; a survives
    """

    def __init__(self, session):
        self._session = session
        self._refs = []

    def __enter__(self):
        self._session._scope_stack().append(self)
        return self

    def __exit__(self, exc_type, exc, tb):
        stack = self._session._scope_stack()
        if stack and stack[-1] is self:
            stack.pop()
        elif self in stack:
            stack.remove(self)
        self.release_all(raise_errors=exc_type is None)

    def _track(self, ref):
        self._refs.append(weakref.ref(ref))

    def keep(self, ref):
        """Takes ``ref`` out of this scope (into the enclosing one, if any); returns it."""
        for i, r in enumerate(self._refs):
            if r() is ref:
                del self._refs[i]
                break
        else:
            raise ValueError(f"{ref!r} does not belong to this scope")
        stack = self._session._scope_stack()
        if self in stack:
            below = stack.index(self)
            if below > 0:
                stack[below - 1]._track(ref)
        return ref

    def release_all(self, raise_errors=True):
        """Releases the scope's remaining references now (what leaving the block does)."""
        refs, self._refs = self._refs, []
        queued = False
        for r in reversed(refs):
            ref = r()
            if ref is not None and not ref._released:
                ref._released = True
                self._session._release_later(ref._handle)
                queued = True
        if queued and self._session.connected:
            try:
                self._session.flush()
            except errors.Error:
                if raise_errors:
                    raise


class Session:
    """One session with heapd: a managed heap on the server, and the client's references.

    Create it with :func:`heapd.connect`.  Its parts mirror the modules Python users
    know: :meth:`alloc` creates objects, :meth:`getrefcount` and :meth:`getsizeof` are
    ``sys``'s, :attr:`gc` is the ``gc`` module, :meth:`weakref` is ``weakref.ref`` and
    :attr:`tracemalloc` is ``tracemalloc``.

    Attributes:
        session_id, resume_token: what :func:`connect` needs to resume the session.
        server_version: the daemon's version string.
        limits: a :class:`Limits` from the server.
        resumed: True if this connection resumed an existing session.
        admin: True if the token granted admin requests.
        gc: the session's collector (:class:`heapd.GC`).
        tracemalloc: the session's allocation tracer (:class:`heapd.Tracemalloc`).
        on_finalize: ``None``, or a callable run with a :class:`Finalized` for every
            object allocated with ``finalizer=...`` when the server frees it.
    """

    def __init__(self, url=None, token=None, *, resume=None, timeout=None,
                 connect_timeout=10.0, resume_wait=2.0, client_name=CLIENT_NAME):
        self.url = url or os.environ.get("HEAPD_URL") or DEFAULT_URL
        self._token = token if token is not None else os.environ.get("HEAPD_TOKEN")
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._resume_wait = resume_wait
        self._client_name = client_name
        self._lock = threading.RLock()
        self._local = threading.local()
        self._transport = None
        self._closed = False
        self._next_id = 1
        self._deferred = collections.deque()  # (op, value) sent ahead of the next request
        self._discard = {}  # request id -> op, for requests no caller waits on
        self._events = collections.deque()  # events read, not yet dispatched
        self._nresponses = 0  # responses read on this session, over all connections
        self._ended_at = None  # _nresponses when the server's last word (id 0) came
        self._mask = 0  # the event mask in effect on the server
        self._finalizers = {}  # handle -> callable, from alloc(finalizer=callable)
        self._weak_callbacks = {}  # weak handle -> weakref.ref(WeakRef) with a callback
        self.on_finalize = None
        self.gc = GC(self)
        self.tracemalloc = Tracemalloc(self)
        self.session_id = self.resume_token = ""
        self.server_version = ""
        self.limits = Limits(0, 0, 0, 0)
        self.resumed = self.admin = False
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

    def _hello(self, resume):
        """Opens a connection and exchanges hello on it."""
        transport = Transport(self.url, timeout=self._timeout,
                              connect_timeout=self._connect_timeout)
        sid, tok = resume if resume else ("", "")
        hello = pb.Hello(protocol_version=PROTOCOL_VERSION, client_name=self._client_name,
                         token=self._token or "", session_id=sid, resume_token=tok)
        try:
            rid = self._new_id()
            transport.send([_encode(rid, "hello", hello)])
            while True:
                frame = pb.ServerFrame.FromString(transport.recv())
                if frame.WhichOneof("kind") == "response":
                    break
            if frame.response.id not in (rid, 0):
                raise errors.Error(f"hello answered with id {frame.response.id}")
            result = _result(frame.response, "hello")
            if result is None:
                raise errors.Error("hello answered without a HelloResult")
        except BaseException:
            transport.close()
            raise
        self._transport = transport
        self.session_id = result.session_id
        self.resume_token = result.resume_token
        self.server_version = result.server_version
        self.resumed = result.resumed
        self.admin = result.admin
        lim = result.limits
        self.limits = Limits(lim.max_bytes, lim.max_objects, lim.max_frame_bytes,
                             lim.max_read_bytes)
        # A resumed session keeps the event mask it had; a new one starts with none.
        self._mask = -1 if result.resumed else 0

    @property
    def connected(self):
        """True while the session has a live connection."""
        return self._transport is not None and not self._transport.closed

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
            self._deferred.clear()  # the heap goes with the session
            try:
                if self.connected:
                    self._exchange([("goodbye", None)])
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

    def _drop(self):
        """Closes the connection without a goodbye and forgets the in-flight requests."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._discard.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        transport = getattr(self, "_transport", None)
        if transport is not None and not transport.closed and not self._closed:
            warnings.warn(f"unclosed heapd session {self.session_id}", ResourceWarning,
                          source=self)
            transport.close()

    def __repr__(self):
        state = "closed" if self._closed else ("connected" if self.connected else "detached")
        return f"<heapd.Session {self.session_id} {state} {self.url}>"

    def _require_open(self):
        if self._closed:
            raise errors.ConnectionClosed("the session is closed")

    # -- requests ----------------------------------------------------------------------------

    def _new_id(self):
        rid = self._next_id
        self._next_id += 1
        return rid

    def _call(self, op, msg=None):
        """Sends one request and returns its result message (``None`` if it has none)."""
        return self._exchange([(op, msg)])[0]

    def _exchange(self, calls):
        """Sends the requests ``calls`` = [(op, msg)] pipelined, after the queued releases.

        Returns their results in order; raises the first failure after reading every
        response.  Events read on the way are dispatched before returning or raising.
        """
        with self._lock:
            self._require_open()
            if not self.connected:
                raise errors.ConnectionClosed(
                    "not connected (call reconnect() to resume the session)")
            frames, deferred = self._prelude()
            ids = []
            for op, msg in calls:
                rid = self._new_id()
                ids.append(rid)
                frames.append(_encode(rid, op, msg))
            if self._mask and any(op in _EVENTFUL for op, _ in calls):
                # Events follow the response of the request that raised them: a ping
                # behind the calls makes them arrive before this exchange ends.
                ids.append(self._new_id())
                frames.append(_encode(ids[-1], "ping", None))
            responses = []
            start, self._ended_at = self._nresponses, None
            try:
                self._send(frames)
                for rid in ids:
                    responses.append(self._wait(rid))
            except BaseException:
                if self._ended_at == start:
                    # The server ended the connection before answering anything sent
                    # here, so it ran none of it: the queued releases wait for the
                    # resumed connection rather than being lost.
                    self._deferred.extendleft(reversed(deferred))
                # Responses still owed (an interrupt, say) are skipped when they come.
                for rid in ids[len(responses):]:
                    self._discard[rid] = "abandoned"
                raise
            finally:
                self._dispatch_events()
            first_error = None
            results = []
            for (op, _), resp in zip(calls, responses):
                try:
                    results.append(_result(resp, op))
                except errors.Error as exc:
                    first_error = first_error or exc
                    results.append(None)
            if first_error is not None:
                raise first_error
            return results

    def _send(self, frames):
        """Writes frames; when the connection is gone, raises the server's last word if it
        left one (its id-0 response: idle timeout, shutdown, session killed)."""
        try:
            self._transport.send(frames)
        except errors.ConnectionClosed:
            while True:
                try:
                    frame = self._read_frame(timeout=0, block=False)
                except errors.ConnectionClosed:
                    frame = None
                if frame is None:
                    break
                resp = self._route(frame)
                if resp is not None:
                    self._unsolicited(resp)
            self._drop()
            raise

    def _wait(self, rid):
        """Reads frames until the response to request ``rid``; queues events on the way."""
        while True:
            resp = self._route(self._read_frame())
            if resp is None:
                continue
            if resp.id == rid:
                return resp
            self._unsolicited(resp)

    def _read_frame(self, timeout=None, block=True):
        """The next ServerFrame (``None`` if ``block`` is false and none came in
        ``timeout`` seconds).  A lost connection or an undecodable frame drops the
        connection and raises."""
        try:
            payload = self._transport.recv(timeout=timeout, block=block)
            return None if payload is None else pb.ServerFrame.FromString(payload)
        except errors.ConnectionClosed:
            self._drop()
            raise
        except Exception as exc:  # a frame that does not parse: the stream is lost
            self._drop()
            raise errors.Error(f"undecodable frame from server: {exc}") from exc

    def _unsolicited(self, resp):
        """Handles a response that answers no request in flight, and raises.

        Id 0 with an error is the server ending the connection (idle timeout, shutdown,
        session killed, undecodable frame): the connection is dropped and the error
        raised.  Anything else means the stream is out of step and cannot be trusted."""
        self._drop()
        if resp.id == 0 and resp.status.code:
            self._ended_at = self._nresponses - 1  # responses read before the last word
            raise _status_error(resp.status)
        raise errors.Error(f"response to unknown request {resp.id}; connection dropped")

    def _route(self, frame):
        """Handles one server frame: queues an event, settles a response nobody waits for,
        or returns a response for the caller to match."""
        kind = frame.WhichOneof("kind")
        if kind == "event":
            self._events.append(frame.event)
            return None
        if kind != "response":
            return None  # a kind from a newer protocol
        resp = frame.response
        self._nresponses += 1
        op = self._discard.pop(resp.id, None)
        if op is None:
            return resp
        code = resp.status.code
        if op == "set_events":
            if code == 0:
                self._mask = resp.set_events.mask
            else:
                self._mask = -1  # unknown: set it again before the next request
        elif code and op != "abandoned":
            warnings.warn(f"heapd: deferred {op} failed: [{resp.status.name}] "
                          f"{resp.status.message}", RuntimeWarning, stacklevel=2)
        return None

    def _prelude(self):
        """Frames to send ahead of the next request: set_events if the wanted event mask
        changed, then every queued release (decrefs of one handle merged into one).
        Returns the frames and the queue entries they were made from."""
        frames = []
        want = self._wanted_mask()
        if want != self._mask:
            rid = self._new_id()
            self._discard[rid] = "set_events"
            frames.append(_encode(rid, "set_events", pb.SetEvents(mask=want)))
            self._mask = want
        decrefs = collections.Counter()
        others = []
        taken = []
        while True:
            try:
                op, value = self._deferred.popleft()
            except IndexError:
                break
            taken.append((op, value))
            if op == "decref":
                decrefs[value] += 1
            else:
                others.append((op, value))
        for handle, n in decrefs.items():
            rid = self._new_id()
            self._discard[rid] = "decref"
            frames.append(_encode(rid, "decref", pb.Decref(handle=handle, n=n)))
        for op, fields in others:
            rid = self._new_id()
            self._discard[rid] = op
            msg_class = getattr(pb, pb.Request.DESCRIPTOR.fields_by_name[op].message_type.name)
            frames.append(_encode(rid, op, msg_class(**fields)))
        return frames, taken

    def _release_later(self, handle):
        """Queues a decref of ``handle`` for the next request (safe from ``__del__``)."""
        if not self._closed:
            self._deferred.append(("decref", handle))

    def _defer(self, op, **fields):
        """Queues request ``op`` with ``fields`` for the next exchange, when nobody needs
        its answer (weakref_free, trace_snapshot_free, ...).  Safe from ``__del__``: it
        only appends to a queue."""
        if not self._closed:
            self._deferred.append((op, fields))

    def flush(self):
        """Sends the queued releases now (and reads any pending events)."""
        self._exchange([("ping", None)])

    def ping(self):
        """Round trip to the server; returns its wall clock in nanoseconds since the epoch."""
        return self._call("ping").server_time_unix_ns

    # -- events ------------------------------------------------------------------------------

    def _wanted_mask(self):
        mask = 0
        if self.on_finalize is not None or self._finalizers:
            mask |= _EV_FINALIZED
        if self._weak_callbacks:
            mask |= _EV_WEAKREF_CLEARED
        if self.gc.callbacks:
            mask |= _EV_GC
        return mask

    def poll(self, timeout=0.0):
        """Reads the events that have arrived (waiting up to ``timeout`` seconds for the
        first) and runs their callbacks.  Returns how many events were handled.

        Calls on the session do this by themselves; ``poll`` is for a client that wants
        events while it makes no calls.
        """
        with self._lock:
            self._require_open()
            if not self.connected:
                raise errors.ConnectionClosed("not connected")
            wait = timeout
            try:
                while True:
                    frame = self._read_frame(timeout=wait, block=False)
                    if frame is None:
                        break
                    resp = self._route(frame)
                    if resp is not None:
                        self._unsolicited(resp)
                    wait = 0.0
            finally:
                count = len(self._events)
                self._dispatch_events()
            return count

    def _dispatch_events(self):
        """Runs the callbacks of the queued events, oldest first."""
        while self._events:
            ev = self._events.popleft()
            kind = ev.WhichOneof("kind")
            if kind == "finalized":
                info = Finalized(ev.finalized.handle, ev.finalized.tag)
                callback = self._finalizers.pop(info.handle, None)
                if callback is not None:
                    self._run_callback(callback, info)
                if self.on_finalize is not None:
                    self._run_callback(self.on_finalize, info)
            elif kind == "weakref_cleared":
                wr = self._weak_callbacks.pop(ev.weakref_cleared.weak, None)
                w = wr() if wr is not None else None
                if w is not None:
                    w._referent_died()
            elif kind == "gc_start":
                self._gc_callbacks("start", {"generation": ev.gc_start.generation,
                                             "collected": 0, "uncollectable": 0, "pause": 0.0})
            elif kind == "gc_stop":
                e = ev.gc_stop
                self._gc_callbacks("stop", {"generation": e.generation, "collected": e.collected,
                                            "uncollectable": e.uncollectable,
                                            "pause": e.pause_ns / 1e9})

    def _gc_callbacks(self, phase, info):
        """Runs ``gc.callbacks`` as CPython does: each gets the phase and a fresh dict."""
        for callback in list(self.gc.callbacks):
            self._run_callback(callback, phase, dict(info))

    @staticmethod
    def _run_callback(callback, *args):
        """Calls an event callback; an exception it raises is printed, as Python prints
        the exceptions of gc callbacks and weakref callbacks, and does not stop the call."""
        try:
            callback(*args)
        except Exception:
            print(f"Exception ignored in heapd event callback {callback!r}:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)

    # -- scopes and refs ---------------------------------------------------------------------

    def _scope_stack(self):
        stack = getattr(self._local, "scopes", None)
        if stack is None:
            stack = self._local.scopes = []
        return stack

    def scope(self):
        """Returns a :class:`Scope`: ``with s.scope():`` releases the references taken inside."""
        return Scope(self)

    def _adopt(self, handle):
        """Wraps a client reference the session holds in a new Ref (None for handle 0)."""
        if not handle:
            return None
        ref = Ref(self, handle)
        stack = getattr(self._local, "scopes", None)
        if stack:
            stack[-1]._track(ref)
        return ref

    def adopt(self, handle):
        """Returns a :class:`Ref` owning one client reference that the session already
        holds on ``handle`` but no ``Ref`` owns (see :meth:`Ref.forget`, and resuming a
        detached session)."""
        if not isinstance(handle, int) or not 0 < handle < 1 << 64:
            raise errors.InvalidArgument(f"bad handle {handle!r}")
        self._require_open()
        return self._adopt(handle)

    # -- objects -----------------------------------------------------------------------------

    def alloc(self, size=0, slots=0, tag=None, site=None, finalizer=False, data=None,
              legacy_finalizer=False):
        """Allocates an object and returns a :class:`Ref` owning its first reference.

        Args:
            size: payload bytes (zeroed); at least ``len(data)``, which it defaults to.
            slots: reference slots, all empty; any slot makes a container, which the
                cycle collector tracks (an object with no slots is atomic, like an int).
            tag: a type name ("Node"), for ``tracemalloc`` statistics and events.
            site: where it was allocated; by default the caller's ``file:line``, as
                ``tracemalloc`` records it.  ``""`` records none.
            finalizer: True to have the server report the object's death (to
                :attr:`on_finalize`), or a callable run with a :class:`Finalized` when
                it dies (and :attr:`on_finalize` too, if set).  Like ``__del__``.
            data: initial payload bytes (written in pieces after the allocation when
                they do not fit in one frame).
            legacy_finalizer: a cycle holding the object is uncollectable and goes to
                ``gc.garbage``, as cycles with ``__del__`` did before Python 3.4.
        """
        if data is not None:
            data = bytes(data)
            if not size:
                size = len(data)
            elif len(data) > size:
                raise errors.InvalidArgument(f"{len(data)} bytes of data for a payload of {size}")
        if site is None:
            site = _caller_site()
        flags = 0
        if finalizer:
            flags |= _OBJ_FINALIZER
        if legacy_finalizer:
            flags |= _OBJ_LEGACY_FINALIZER
        # Initial data that would not fit in one frame is written after the allocation.
        inline = data if data and len(data) <= self._chunk() else b""
        msg = pb.Alloc(size=size, slots=slots, tag=tag or "", site=_clip(site), flags=flags,
                       data=inline)
        with self._lock:
            ref = self._adopt(self._call("alloc", msg).handle)
            if callable(finalizer):
                # The object cannot die before a later request, and that request sends
                # the event mask (now with FINALIZED) ahead of itself.
                self._finalizers[ref.handle] = finalizer
        if data and not inline:
            self._write(ref.handle, 0, data)
        return ref

    def getrefcount(self, ref):
        """The object's reference count, as ``sys.getrefcount``: the client's references
        plus the slots pointing at it.  Unlike ``sys.getrefcount`` there is no temporary
        reference for the argument, so ``a = s.alloc(); s.getrefcount(a)`` is 1."""
        return self._call("getrefcount", pb.GetRefcount(handle=_handle(ref))).value

    def getsizeof(self, ref):
        """Bytes the object occupies (header, slots, payload), as ``sys.getsizeof``."""
        return self._call("getsizeof", pb.GetSizeof(handle=_handle(ref))).value

    def weakref(self, ref, callback=None):
        """Returns a :class:`WeakRef` to ``ref``'s object, as ``weakref.ref(obj, callback)``.

        Calling the result gives a new :class:`Ref`, or ``None`` once the object is
        dead.  ``callback``, if given, is called with the :class:`WeakRef` when the
        object dies (from the server's event, during a later call on the session).
        """
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        with self._lock:
            result = self._call("weakref_new",
                                pb.WeakrefNew(handle=_handle(ref), notify=callback is not None))
            w = WeakRef(self, result.weak, ref.handle, callback)
            if callback is not None:
                self._weak_callbacks[result.weak] = weakref.ref(w)
        return w

    def stats(self):
        """The heap's statistics (the engine's HD_HEAP_STATS_MAP, plus size classes, gc
        counts and event counters) as a dict, like ``sys._debugmallocstats()``."""
        return _message_dict(self._call("heap_stats"))

    def _incref(self, handle):
        self._call("incref", pb.Incref(handle=handle, n=1))

    def _decref(self, handle):
        self._call("decref", pb.Decref(handle=handle, n=1))

    def _get_slot(self, handle, index):
        return self._adopt(self._call("get_slot", pb.GetSlot(handle=handle, index=index)).handle)

    def _set_slot(self, handle, index, target):
        self._call("set_slot", pb.SetSlot(handle=handle, index=index, target=target))

    def _chunk(self):
        return self.limits.max_read_bytes or _DEFAULT_READ

    def _write(self, handle, offset, data):
        step = self._chunk()
        calls = [("write", pb.Write(handle=handle, offset=offset + pos, data=data[pos:pos + step]))
                 for pos in range(0, max(len(data), 1), step)]
        self._exchange(calls)

    def _read(self, handle, offset, length):
        if length is None:
            size = self._obj_info(handle).size
            if offset > size:
                raise errors.OutOfRange(f"offset {offset} past the payload ({size} bytes)")
            length = size - offset
        step = self._chunk()
        calls = [("read", pb.Read(handle=handle, offset=offset + pos,
                                  length=min(step, length - pos)))
                 for pos in range(0, max(length, 1), step)]
        return b"".join(r.data for r in self._exchange(calls))

    def _obj_info(self, handle):
        r = self._call("obj_info", pb.ObjInfo(handle=handle))
        return ObjectInfo(r.refcount, r.client_refs, r.sizeof_bytes, r.size, r.slots,
                          bool(r.flags & _OBJ_FINALIZER), bool(r.flags & _OBJ_LEGACY_FINALIZER),
                          r.tracked, r.generation, r.tag, r.site)

    # -- admin -------------------------------------------------------------------------------

    def server_stats(self):
        """The daemon's counters (sessions, connections, requests, ...) as a dict.
        Needs an admin token (else :class:`heapd.PermissionDenied`)."""
        return _message_dict(self._call("server_stats"))

    def list_sessions(self):
        """Every session on the daemon, as a list of dicts.  Needs an admin token."""
        return [_message_dict(s) for s in self._call("list_sessions").sessions]

    def kill_session(self, session_id):
        """Ends another session and frees its heap.  Needs an admin token."""
        self._call("kill_session", pb.KillSession(session_id=session_id))


def _handle(ref):
    """The live handle of a Ref argument."""
    if not isinstance(ref, Ref):
        raise TypeError(f"expected a heapd.Ref, not {type(ref).__name__}")
    return ref._live()


def _clip(text, limit=255):
    """Shortens a site to the server's limit of 255 UTF-8 bytes, keeping its end (the
    file name and line number matter most)."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return "..." + raw[-(limit - 3):].decode(errors="ignore")


def _caller_site():
    """``file:line`` of the first frame outside this package, as tracemalloc records it."""
    here = os.path.dirname(__file__)
    frame = sys._getframe(1)
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == here:
        frame = frame.f_back
    if frame is None:
        return ""
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _message_dict(msg):
    """A protobuf message as a dict with every field, defaults included: repeated scalars
    become tuples, repeated messages lists of dicts."""
    out = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.label == field.LABEL_REPEATED:
            if field.message_type is not None:
                value = [_message_dict(v) for v in value]
            else:
                value = tuple(value)
        elif field.message_type is not None:
            value = _message_dict(value)
        out[field.name] = value
    return out
