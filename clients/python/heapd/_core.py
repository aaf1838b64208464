# SPDX-License-Identifier: MIT
"""What every kind of session shares: its state, the protocol's rules, and the operations.

A session (blocking :class:`heapd.Session`, :class:`heapd.asyncio.Session`) is this class
plus a way to move bytes.  Everything here is free of I/O:

* **Requests and their answers.**  Each request is numbered and put on the in-flight queue
  as an *entry*; the server answers in order, so every response must answer the entry at
  the head of the queue: same id, the result field of that op (or none for an op without a
  result, and none on failure).  Anything else is :class:`heapd.BadReply` and the
  connection is dropped (:meth:`_settle`).  Id 0 with an error is the server's last word
  (idle timeout, shutdown, an admin's kill): the connection is dropped and that error
  raised.
* **The prelude.**  Releases that could not be sent when they happened (a :class:`Ref`
  freed by Python, a weak reference or snapshot dropped without ``close()``) are queued and
  sent ahead of the next request, in the same write; so is ``set_events`` when the set of
  registered callbacks changed (:meth:`_prelude`).  A failed release is reported as a
  :class:`RuntimeWarning`, since there is no caller left to raise it to.
* **Events** are queued as they are read and dispatched (callbacks run) when the exchange
  that read them ends (:meth:`_dispatch_events`).  So that a call's own events are handled
  before it returns, a call that may raise events (:attr:`_ops.Op.eventful`) is followed on
  the wire by a ``ping`` in the same write while some callback is registered.
* **Operations.**  Each public method validates its arguments, then hands the request to
  ``self._do(op, args, finish)``, or a generator of several steps to ``self._drive(gen)``.
  The blocking session runs them at once, the asyncio session returns a coroutine, a
  pipeline queues them: one definition serves the three.  ``finish(session, value)`` turns
  the decoded result into what the method returns (a handle into a :class:`Ref`, ...).

Subclasses provide ``_do``, ``_drive``, ``_require_open`` and the connection lifetime.
"""

import collections
import contextvars
import os
import sys
import traceback
import warnings
import weakref

from . import errors
from ._codec import codec
from ._gc import GC
from ._ops import OPS, pb
from ._ref import ObjectInfo, Ref
from ._trace import Tracemalloc, clip_site, format_site
from ._transport import is_tls_url, resolve_url, tls_context
from ._version import __version__
from ._weak import WeakrefModule, _made

__all__ = ["SessionCore", "Scope", "Limits", "Finalized", "PROTOCOL_VERSION", "CLIENT_NAME"]

#: The protocol version this client speaks (``Hello.protocol_version``).
PROTOCOL_VERSION = 1
# Hellos sent on to the node a redirect (EMOVED) names, at most, per connect or resume: more
# means nodes that disagree about who owns the session (docs/SCALING.md); the C client's
# HDC_MAX_REDIRECTS.
MAX_REDIRECTS = 5

CLIENT_NAME = "heapd-python/" + __version__

#: The session's limits from the server's hello (0 = unlimited).
Limits = collections.namedtuple(
    "Limits", "max_bytes max_objects max_frame_bytes max_read_bytes replay_window",
    defaults=(0,))

#: What a finalizer callback receives: the freed object's (now stale) handle and its tag.
Finalized = collections.namedtuple("Finalized", "handle tag")

# Event mask bits (proto EventBit): a mask selects event type t with bit 1 << t.
_EV_FINALIZED = 1 << pb.FINALIZED
_EV_WEAKREF_CLEARED = 1 << pb.WEAKREF_CLEARED
_EV_GC = (1 << pb.GC_START) | (1 << pb.GC_STOP)
# Events that report a death: while one is wanted, a Ref freed by Python is released at
# once when the session is idle, so that the callback runs at the ``del`` as in CPython.
_EV_DEATHS = _EV_FINALIZED | _EV_WEAKREF_CLEARED

# Event kinds (Event.kind field numbers).
_EVK_FINALIZED = pb.Event.DESCRIPTOR.fields_by_name["finalized"].number
_EVK_WEAKREF_CLEARED = pb.Event.DESCRIPTOR.fields_by_name["weakref_cleared"].number
_EVK_GC_START = pb.Event.DESCRIPTOR.fields_by_name["gc_start"].number
_EVK_GC_STOP = pb.Event.DESCRIPTOR.fields_by_name["gc_stop"].number

# Engine flags (heap.h HD_OBJ_*), as the proto's ObjFlag.
_OBJ_FINALIZER = pb.OBJ_FINALIZER
_OBJ_LEGACY_FINALIZER = pb.OBJ_LEGACY_FINALIZER

# Largest read or write chunk when the server does not say (its own default).
_DEFAULT_READ = 1 << 20

# The ops used by name below.
HELLO, GOODBYE, PING, SET_EVENTS = OPS["hello"], OPS["goodbye"], OPS["ping"], OPS["set_events"]
ALLOC, INCREF, DECREF = OPS["alloc"], OPS["incref"], OPS["decref"]
GET_SLOT, SET_SLOT, WRITE, READ = OPS["get_slot"], OPS["set_slot"], OPS["write"], OPS["read"]
_PING_ARGS = PING.args()
_ALLOC_ARGS = ALLOC.args
_DECREF_ARGS = DECREF.args

# Entry kinds on the in-flight queue.
CALL = 0  # someone waits for the result
DISCARD = 1  # a queued release: a failure is warned about
EVENTS = 2  # set_events: the mask in effect is taken from the result
BARRIER = 3  # the ping after eventful calls: nothing to do

# Ops whose result holds new client references (handles) or a weak handle; when nobody is
# left to take them (an abandoned call), they are released.
_HANDLE_RESULTS = frozenset({"alloc", "get_slot", "weakref_get"})
_LIST_RESULTS = frozenset({"gc_get_referrers", "gc_get_referents"})


# The scopes entered, innermost last, of every session: a tuple, per thread and per asyncio
# task (a context variable), so that `with s.scope():` covers what the block's own thread
# or task takes.
_SCOPES = contextvars.ContextVar("heapd_scopes", default=())


class Scope:
    """Releases every reference taken inside a ``with`` block when the block ends.

    This is the stack frame of a Python function made explicit: each :class:`Ref` the
    session hands out while the scope is the innermost one of its session (allocations,
    shares, slot reads, weak reference calls, ``gc`` results) belongs to it, and the ones
    still holding their reference at the end are released together, newest first, in one
    round trip.  Refs released earlier (``release()``, ``del``) are skipped.  Scopes nest;
    each thread (and each asyncio task) has its own stack of them.  To let a reference
    outlive the block, as a function returns a value, pass it to :meth:`keep`::

        def make_pair(s):
            with s.scope() as frame:
                a, b = s.alloc(slots=1), s.alloc(slots=1)
                a[0] = b
                return frame.keep(a)      # b's reference is released; a survives

    In an asyncio session the block is ``async with s.scope():``.
    """

    def __init__(self, session):
        self._session = session
        self._refs = []
        self._token = None

    def _enter(self):
        self._token = _SCOPES.set(_SCOPES.get() + (self,))

    def _leave(self):
        token, self._token = self._token, None
        stack = _SCOPES.get()
        if token is not None and stack and stack[-1] is self:
            try:
                _SCOPES.reset(token)
                return
            except ValueError:  # entered in another context: fall back to removing it
                pass
        if self in stack:
            _SCOPES.set(tuple(s for s in stack if s is not self))

    def __enter__(self):
        self._enter()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._leave()
        self._release(raise_errors=exc_type is None)

    async def __aenter__(self):
        self._enter()
        return self

    async def __aexit__(self, exc_type, exc, tb):
        self._leave()
        self._take_refs()
        if self._session.connected:
            try:
                await self._session.flush()
            except errors.Error:
                if exc_type is None:
                    raise

    def _track(self, ref):
        self._refs.append(weakref.ref(ref))

    def keep(self, ref):
        """Takes ``ref`` out of this scope (into the enclosing one of its session, if any);
        returns it."""
        for i, r in enumerate(self._refs):
            if r() is ref:
                del self._refs[i]
                break
        else:
            raise ValueError(f"{ref!r} does not belong to this scope")
        outer = None
        for scope in _SCOPES.get():
            if scope is self:
                break
            if scope._session is self._session:
                outer = scope
        if outer is not None:
            outer._track(ref)
        return ref

    def _take_refs(self):
        """Marks the scope's remaining references released and queues their decrefs."""
        refs, self._refs = self._refs, []
        queued = False
        for r in reversed(refs):
            ref = r()
            if ref is not None and not ref._released:
                ref._released = True
                self._session._defer_decref(ref._handle)
                queued = True
        return queued

    def _release(self, raise_errors):
        if self._take_refs() and self._session.connected:
            try:
                self._session.flush()
            except errors.Error:
                if raise_errors:
                    raise

    def release_all(self, raise_errors=True):
        """Releases the scope's remaining references now (what leaving the block does).
        In an asyncio session, await it."""
        if self._session._is_async:
            self._take_refs()
            return self._session.flush()
        self._release(raise_errors)


class _Chunk(bytes):
    """Several frames encoded together; ``count`` says how many (a plain bytes in the
    frame list of an exchange is one frame)."""

    def __new__(cls, data, count):
        self = super().__new__(cls, data)
        self.count = count
        return self


class _Exchange:
    """The requests one call sent and the results it waits for.

    ``out[i]`` is the decoded result of its i-th request, an :class:`heapd.Error` for a
    failure, or ``_PENDING``; ``missing`` counts the pending ones.  An exchange whose caller
    gave up is marked ``abandoned``: results that come later are released, not kept."""

    __slots__ = ("ops", "out", "missing", "abandoned", "answered", "expected", "waiter")

    def __init__(self, ops):
        self.ops = ops
        self.out = [_PENDING] * len(ops)
        self.missing = len(ops)
        self.abandoned = False
        self.answered = 0  # responses read for it, barrier included
        self.expected = len(ops)  # responses it waits for, barrier included (set by _plan)
        self.waiter = None  # the asyncio future of an async exchange


_PENDING = object()


class SessionCore:
    """The I/O-free part of a session (see the module docstring).

    Attributes:
        url: the URL connected to.
        session_id, resume_token: what :func:`heapd.connect` needs to resume the session.
        server_version: the daemon's version string.
        limits: a :class:`Limits` from the server.
        resumed: True if this connection resumed an existing session.
        admin: True if the token granted admin requests.
        gc: the session's collector (:class:`heapd.GC`).
        tracemalloc: the session's allocation tracer (:class:`heapd.Tracemalloc`).
        weakref: the session's ``weakref`` module (callable as ``weakref.ref``).
        on_finalize: ``None``, or a callable run with a :class:`Finalized` for every
            object allocated with ``finalizer=...`` when the server frees it.
    """

    _is_async = False

    def _init_state(self, url, token, timeout, connect_timeout, resume_wait, client_name,
                    resume_timeout=None, tls=None):
        self.url = resolve_url(url)
        # The TLS context of a tls:// URL (None otherwise), made once: every connection of
        # the session (resumes too) uses it. tls: tls_context's keyword arguments.
        self._tls_args = tls or {}
        self._ssl_context = tls_context(self.url, **self._tls_args)
        if resume_timeout is not None and not resume_timeout >= 0:
            raise ValueError(f"resume_timeout must be None or >= 0, not {resume_timeout!r}")
        self._resume_timeout = resume_timeout or 0
        self._sent = collections.deque()  # (first id, count, frames) sent, maybe unanswered
        self._pending_resume = False  # the connection was lost with its requests kept
        self._detached = False  # detach() was called: no resuming until reconnect()
        self.resumes = 0
        self._token = token if token is not None else os.environ.get("HEAPD_TOKEN")
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._resume_wait = resume_wait
        self._client_name = client_name
        self._closed = False
        self._next_id = 1
        self._inflight = collections.deque()  # (rid, op, kind, exchange, index)
        self._deferred = collections.deque()  # (op, args) sent ahead of the next request
        self._events = collections.deque()  # events read, not yet dispatched
        self._mask = 0  # the event mask in effect on the server (-1: unknown)
        self._finalizers = {}  # handle -> callable, from alloc(finalizer=callable)
        self._weak_callbacks = {}  # weak handle -> weakref.ref(WeakRef) with a callback
        self._ended = False  # the server's last word (id 0) ended the connection
        self.on_finalize = None
        self._finalizers_alive = {}  # weak handle -> Finalize (weakref.finalize), while alive
        self.gc = GC(self)
        self.tracemalloc = Tracemalloc(self)
        self.weakref = WeakrefModule(self)
        self.session_id = self.resume_token = ""
        self.server_version = ""
        self.limits = Limits(0, 0, 0, 0)
        self.resumed = self.admin = False
        # Several nodes (docs/SCALING.md): the node serving the session, the URL it was
        # reached at (the URL given, or where redirects led), and the redirects followed.
        self.node_id = ""
        self.node_url = self.url
        self.redirects = 0
        self._root = self  # the session itself (a pipeline's is the session it queues for)
        self._trace_nframe = 1  # frames of the caller's stack each allocation records
        self._max_out = 4096  # largest frame we may send (the hello's limit until known)

    def _ssl_for(self, url):
        """The TLS context for a connection to url (the session's own, or a node it was
        redirected to): None unless url is tls://; made from the session's TLS arguments (or
        $HEAPD_CACERT...) when the session began on a URL without TLS."""
        if not is_tls_url(url):
            return None
        if self._ssl_context is None:
            self._ssl_context = tls_context(url, **self._tls_args)
        return self._ssl_context

    # -- the hello ---------------------------------------------------------------------------

    def _hello_args(self, resume, resend=False):
        sid, tok = resume if resume else ("", "")
        if not isinstance(sid, str) or not isinstance(tok, str):
            raise TypeError("resume must be (session_id, resume_token), two str")
        return HELLO.args(protocol_version=PROTOCOL_VERSION, client_name=self._client_name,
                          token=self._token or "", session_id=sid, resume_token=tok,
                          resend=bool(resend))

    def _redirected(self, exc, hops):
        """The node a redirect (:class:`heapd.Moved`, EMOVED) sends the hello to, counted in
        ``redirects``; re-raises it when it names no node or after MAX_REDIRECTS hops.  The
        blocking and the asyncio sessions both follow redirects through this."""
        if not exc.url or hops == MAX_REDIRECTS:
            raise exc
        self.redirects += 1
        return exc.url

    def _check_hello(self, frame, rid, reader):
        """Takes the hello's answer, or raises: the server's error, or :class:`BadReply`
        for anything that is not heapd's answer to this hello."""
        if frame[0] != 1:
            raise errors.BadReply(f"expected the hello's response, got a frame of kind "
                                  f"{frame[0]}")
        _, fid, code, name, message, resnum, result, moved_to = frame
        if fid not in (rid, 0):
            raise errors.BadReply(f"hello answered with id {fid} (sent {rid})")
        if code:
            if resnum:
                raise errors.BadReply("failed hello carries a result")
            exc = errors.error_from_status(code, message, name)
            if isinstance(exc, errors.Moved):
                exc.url = moved_to
            raise exc
        if fid != rid:
            raise errors.BadReply("hello answered with id 0")
        if resnum != HELLO.number:
            raise errors.BadReply(f"hello answered with result field {resnum}")
        hello = result
        if hello.protocol_version != PROTOCOL_VERSION:
            raise errors.BadReply(f"server speaks protocol {hello.protocol_version}, "
                                  f"this client {PROTOCOL_VERSION}")
        for field in ("session_id", "resume_token", "server_version"):
            value = getattr(hello, field)
            if not value or len(value) > 256 or not value.isprintable():
                raise errors.BadReply(f"hello answered with a bad {field} {value!r}")
        lim = hello.limits
        if lim is None:
            raise errors.BadReply("hello answered without limits")
        if not 4096 <= lim.max_frame_bytes < 1 << 32 or not \
                0 < lim.max_read_bytes <= lim.max_frame_bytes:
            raise errors.BadReply(f"hello answered with bad limits {tuple(lim)}")
        self.session_id = hello.session_id
        self.resume_token = hello.resume_token
        self.server_version = hello.server_version
        self.resumed = hello.resumed
        self.admin = hello.admin
        self.node_id = hello.node_id
        self.limits = Limits(lim.max_bytes, lim.max_objects, lim.max_frame_bytes,
                             lim.max_read_bytes, lim.replay_window or 0)
        self._max_out = lim.max_frame_bytes
        reader.max_frame = lim.max_frame_bytes
        # A resumed session keeps the event mask it had; a new one starts with none.
        self._mask = -1 if hello.resumed else 0
        # Ids go on above the session's last: a Session that resumed another's session
        # (resume=) starts at 1, and after a drop its re-sends (Hello.resend) would be taken
        # for the earlier requests of those ids and answered from the replay window.
        if hello.resumed and hello.last_id >= self._next_id:
            self._next_id = hello.last_id + 1
        self._ended = False

    # -- requests out --------------------------------------------------------------------

    def _new_id(self):
        rid = self._next_id
        self._next_id = rid + 1
        return rid

    def _encode(self, rid, op, args):
        """One frame, or an argument error raised as :class:`heapd.InvalidArgument`
        (a :class:`ValueError`) or :class:`TypeError`; nothing is sent then."""
        try:
            frame = codec.encode(rid, op.number, args)
        except OverflowError as exc:
            raise errors.InvalidArgument(f"{op.name}: {exc}") from None
        except UnicodeError as exc:
            raise errors.InvalidArgument(f"{op.name}: {exc}") from None
        if len(frame) - 4 > self._max_out:
            raise errors.FrameTooLarge(f"{op.name} request of {len(frame) - 4} bytes is over "
                                       f"the frame limit of {self._max_out}")
        return frame

    def _plan(self, calls, exchange):
        """The frames of one exchange, prelude first, and their in-flight entries.

        ``calls`` is a sequence of ``(op, args)``.  An argument that cannot be encoded
        raises before anything changed (the queued releases stay queued)."""
        frames = []
        entries = []
        taken = []
        mask = self._mask
        try:
            want = self._wanted_mask()
            if want != self._mask:
                rid = self._new_id()
                frames.append(self._encode(rid, SET_EVENTS, SET_EVENTS.args(mask=want)))
                entries.append((rid, SET_EVENTS, EVENTS, None, None))
                self._mask = want
            if self._deferred:
                self._prelude(frames, entries, taken)
            eventful = False
            if len(calls) > 8:
                self._encode_calls(calls, exchange, frames, entries)
                eventful = any(op.eventful for op, _ in calls)
            else:
                for i, (op, args) in enumerate(calls):
                    rid = self._new_id()
                    frames.append(self._encode(rid, op, args))
                    entries.append((rid, op, CALL, exchange, i))
                    eventful = eventful or op.eventful
            exchange.expected = len(calls)
            if eventful and self._mask:
                # Events follow the response of the request that raised them: a ping
                # behind the calls makes them arrive before this exchange ends.
                rid = self._new_id()
                frames.append(self._encode(rid, PING, _PING_ARGS))
                entries.append((rid, PING, BARRIER, exchange, -1))
                exchange.expected += 1
        except BaseException:
            self._mask = mask
            self._deferred.extendleft(reversed(taken))
            raise
        return frames, entries

    def _encode_calls(self, calls, exchange, frames, entries):
        """The frames of many calls, encoded in chunks of up to 256 (each chunk one bytes:
        the window of _session.Session._run counts a chunk as that many frames)."""
        start = self._next_id
        self._next_id = start + len(calls)
        entries.extend([(start + i, op, CALL, exchange, i) for i, (op, _) in enumerate(calls)])
        for base in range(0, len(calls), 256):
            chunk = calls[base:base + 256]
            try:
                data = codec.encode_many([(start + base + i, op.number, args)
                                          for i, (op, args) in enumerate(chunk)])
            except (OverflowError, UnicodeError, TypeError):
                data = None  # find the culprit, and raise its error, one by one
            if data is None or len(data) - 4 * len(chunk) > self._max_out:
                data = b"".join(self._encode(start + base + i, op, args)
                                for i, (op, args) in enumerate(chunk))
            frames.append(_Chunk(data, len(chunk)))

    def _prelude(self, frames, entries, taken):
        """Every queued release, as frames (decrefs of one handle merged into one).  A
        DISCARD entry keeps the queue items it was made from, to queue them again if the
        server ends the connection before running it (see :meth:`_unrun_releases`)."""
        decrefs = {}
        others = []
        while True:
            try:
                item = self._deferred.popleft()
            except IndexError:
                break
            taken.append(item)
            op, args = item
            if op is DECREF:
                decrefs.setdefault(args, []).append(item)
            else:
                others.append(item)
        for handle, items in decrefs.items():
            rid = self._new_id()
            frames.append(self._encode(rid, DECREF, _DECREF_ARGS(handle=handle, n=len(items))))
            entries.append((rid, DECREF, DISCARD, None, items))
        for item in others:
            rid = self._new_id()
            frames.append(self._encode(rid, item[0], item[1]))
            entries.append((rid, item[0], DISCARD, None, [item]))

    def _unrun_releases(self):
        """After the server's last word: the queued releases it never answered were never
        run (it answers in order), so they go back on the queue for the next connection."""
        if not self._ended or self._closed:
            return
        unrun = []
        for _rid, _op, kind, _ex, items in self._inflight:
            if kind == DISCARD:
                unrun.extend(items)
        self._deferred.extendleft(reversed(unrun))

    def _defer_decref(self, handle):
        """Queues a decref of ``handle`` for the next request (safe from ``__del__``)."""
        if not self._closed:
            self._deferred.append((DECREF, handle))

    def _defer(self, op, **fields):
        """Queues request ``op`` (by name) for the next exchange, when nobody needs its
        answer (weakref_free, trace_snapshot_free, gc_close_cursor).  Safe from ``__del__``:
        it only appends to a queue."""
        if not self._closed:
            self._deferred.append((OPS[op], OPS[op].args(**fields)))

    def _release_later(self, handle):
        """A :class:`Ref` Python freed: its decref goes with the next request, or at once
        when callbacks wait for deaths and the session is idle (see :meth:`_eager_flush`)."""
        if self._closed:
            return
        self._deferred.append((DECREF, handle))
        # The callbacks wanted now count, even before set_events told the server: the flush
        # sends set_events ahead of the release.
        if self.connected and self._wanted_mask() & _EV_DEATHS:
            self._eager_flush()

    def _eager_flush(self):
        """Sends the queued releases now if that is safe here; subclasses decide."""

    # -- responses in ------------------------------------------------------------------

    def _settle(self, frame):
        """Handles one decoded frame from the server.  Returns the exchange one of whose
        results it delivered (or None); raises :class:`BadReply` or the server's last word
        after dropping the connection."""
        kind = frame[0]
        if kind == 2:
            self._events.append(frame)
            return None
        if kind != 1:
            return None  # a frame kind from a newer protocol
        _, fid, code, name, message, resnum, result, _moved = frame
        if not self._inflight:
            if fid == 0 and code:
                self._last_word(code, message, name)
            self._protocol_error(f"response {fid} to no request")
        rid, op, ekind, exchange, index = self._inflight[0]
        if fid != rid:
            if fid == 0 and code:
                self._last_word(code, message, name)
            self._protocol_error(f"response id {fid} where {rid} ({op.name}) was due")
        # Checked before the entry leaves the queue, so that a bad answer fails its own
        # call too when the connection is dropped.
        if code:
            if resnum and op.name != "batch":
                self._protocol_error(f"failed {op.name} carries result field {resnum}")
            value = errors.error_from_status(code, message, name)
        else:
            want = op.resnum
            if resnum != want:
                self._protocol_error(f"{op.name} answered with result field {resnum} "
                                     f"(expected {want or 'none'})")
            value = result
        self._inflight.popleft()
        if exchange is not None:
            exchange.answered += 1
        if ekind == CALL:
            if exchange.abandoned:
                self._release_result(op, value)
                return None
            exchange.out[index] = value
            exchange.missing -= 1
            return exchange
        if ekind == BARRIER:
            return exchange
        if ekind == EVENTS:
            self._mask = value.mask if not code else -1  # -1: set it again next time
        elif ekind == DISCARD:
            if code:
                warnings.warn(f"heapd: deferred {op.name} failed: [{name}] {message}",
                              RuntimeWarning, stacklevel=3)
        return None

    def _release_result(self, op, value):
        """Gives back the references a result holds when nobody takes it."""
        if isinstance(value, errors.Error) or value is None:
            return
        if op.name in _HANDLE_RESULTS and value:
            self._defer_decref(value)
        elif op.name == "weakref_new" and value:
            self._defer("weakref_free", weak=value)
        elif op.name in _LIST_RESULTS:
            for h in value:
                self._defer_decref(h)

    def _protocol_error(self, text):
        self._drop()
        raise errors.BadReply(text + "; connection dropped")

    def _last_word(self, code, message, name):
        """The server ended the connection (id 0): drop it and raise its reason."""
        self._ended = True
        self._lost(code)
        raise errors.error_from_status(code, message, name)

    # -- resuming (resume_timeout) -------------------------------------------------------------

    #: The server's last words after which the session lingers and can be resumed: its
    #: shutdown (a restart brings the session back from its snapshot) and an idle timeout.
    _RESUMABLE_CODES = frozenset((errors.ShuttingDown.code, errors.IdleTimeout.code))

    def _can_resume(self, code=None):
        """Whether a lost connection is resumed, its unanswered requests re-sent."""
        return (self._resume_timeout > 0 and not self._closed and not self._detached
                and bool(self.session_id) and (code is None or code in self._RESUMABLE_CODES))

    def _lost(self, code=None):
        """The connection is gone (a drop, the server's last word ``code``).  Resuming: the
        requests in flight are kept to be re-sent (``_pending_resume``); else as _drop."""
        if self._can_resume(code):
            self._pending_resume = True
            self._close_transport()
        else:
            self._pending_resume = False
            self._drop()

    def _close_transport(self):
        """Closes the connection only (subclasses)."""
        self._drop()

    def _note_sent(self, first, count, data):
        """Keeps ``count`` frames from id ``first`` (sent now) until they are answered, to
        re-send after a resume; forgets those answered already."""
        sent = self._sent
        low = self._inflight[0][0] if self._inflight else self._next_id
        while sent and sent[0][0] + sent[0][1] <= low:
            sent.popleft()
        sent.append((first, count, data))

    def _unanswered(self):
        """The pieces of ``_sent`` not answered yet, in order, the first cut at the oldest
        request in flight: ``[(first id, count, frames)]``."""
        if not self._inflight:
            return []
        low = self._inflight[0][0]
        out = []
        for first, count, data in self._sent:
            if first + count <= low:
                continue
            if first < low:
                pos = 0
                for _ in range(low - first):  # length-prefixed: step over the answered
                    pos += 4 + int.from_bytes(data[pos:pos + 4], "big")
                first, count, data = low, count - (low - first), data[pos:]
            out.append((first, count, data))
        return out

    def _replay_limit(self, window):
        """The in-flight bound while resuming is on: no more requests unanswered than the
        server keeps responses for, so that a re-send never finds its answer gone."""
        if self._resume_timeout > 0 and self.limits.replay_window:
            return min(window, self.limits.replay_window)
        return window

    def _abandon(self, exchange):
        """The caller of ``exchange`` gave up: its results are released when they come."""
        exchange.abandoned = True
        for i, v in enumerate(exchange.out):
            if v is not _PENDING and exchange.ops[i] is not None:
                self._release_result(exchange.ops[i], v)
                exchange.out[i] = _PENDING

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

    def _dispatch_events(self):
        """Runs the callbacks of the queued events, oldest first."""
        events = self._events
        while events:
            _, kind, ev = events.popleft()
            if kind == _EVK_FINALIZED:
                info = Finalized(ev.handle, ev.tag)
                callback = self._finalizers.pop(info.handle, None)
                if callback is not None:
                    self._run_callback(callback, info)
                if self.on_finalize is not None:
                    self._run_callback(self.on_finalize, info)
            elif kind == _EVK_WEAKREF_CLEARED:
                wr = self._weak_callbacks.pop(ev, None)  # WeakrefCleared has one field
                w = wr() if wr is not None else None
                if w is not None:
                    w._referent_died()
            elif kind == _EVK_GC_START:  # GcStart has one field, the generation
                self._gc_callbacks("start", {"generation": ev, "collected": 0,
                                             "uncollectable": 0})
            elif kind == _EVK_GC_STOP:
                self._gc_callbacks("stop", {"generation": ev.generation,
                                            "collected": ev.collected,
                                            "uncollectable": ev.uncollectable,
                                            "duration": ev.pause_ns / 1e9})

    def _gc_callbacks(self, phase, info):
        """Runs ``gc.callbacks`` as CPython does: each gets the phase and a fresh dict."""
        for callback in list(self.gc.callbacks):
            self._run_callback(callback, phase, dict(info))

    def _run_callback(self, callback, *args):
        """Calls an event callback; an exception it raises is printed, as Python prints
        the exceptions of gc callbacks and weakref callbacks, and does not stop the call."""
        try:
            callback(*args)
        except Exception:
            print(f"Exception ignored in heapd event callback {callback!r}:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)

    # -- scopes and refs ---------------------------------------------------------------------

    _ref_class = Ref

    def scope(self):
        """Returns a :class:`Scope`: ``with s.scope():`` releases the references taken inside."""
        return Scope(self)

    def _adopt(self, handle):
        """Wraps a client reference the session holds in a new Ref (None for handle 0)."""
        if not handle:
            return None
        ref = self._ref_class(self, handle)
        stack = _SCOPES.get()
        if stack:
            for scope in reversed(stack):
                if scope._session is self:
                    scope._track(ref)
                    break
        return ref

    def _adopt_all(self, handles):
        return [self._adopt(h) for h in handles]

    def adopt(self, handle):
        """Returns a :class:`Ref` owning one client reference that the session already
        holds on ``handle`` but no ``Ref`` owns (see :meth:`Ref.forget`, and resuming a
        detached session)."""
        if not isinstance(handle, int) or not 0 < handle < 1 << 64:
            raise errors.InvalidArgument(f"bad handle {handle!r}")
        self._require_open()
        return self._adopt(handle)

    def _handle(self, ref):
        """The live handle of a Ref argument of this session."""
        if not isinstance(ref, Ref):
            raise TypeError(f"expected a heapd.Ref, not {type(ref).__name__}")
        if ref._session is not self._root:
            raise ValueError(f"{ref!r} belongs to another session")
        return ref._live()

    def _chunk(self):
        return self.limits.max_read_bytes or _DEFAULT_READ

    # =========================================================================================
    # The operations.  Each returns self._do(...) or self._drive(...): a value in a blocking
    # session, a coroutine in an asyncio one, the pipeline itself in a pipeline.
    # =========================================================================================

    def ping(self):
        """Round trip to the server; returns its wall clock in nanoseconds since the epoch."""
        return self._do(PING, _PING_ARGS, None)

    def flush(self):
        """Sends the queued releases now (and reads any pending events)."""
        return self._do(PING, _PING_ARGS, _none)

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
        if data is None and not finalizer and not legacy_finalizer and (
                site is None or (site.__class__ is str and len(site) < 64)):
            # The common case, kept short: a pipeline of allocations spends its time here.
            if site is None:
                nframe = self._root._trace_nframe
                site = _caller_site() if nframe == 1 else _caller_traceback(nframe)
            return self._do(ALLOC, _ALLOC_ARGS(size, slots, tag or "", site, 0, b""),
                            _alloc_finish)
        args, rest = self._alloc_args(size, slots, tag, site, finalizer, data,
                                      legacy_finalizer)
        finish = _alloc_finish if not callable(finalizer) else _finalizer_finish(finalizer)
        if rest:
            return self._drive(self._alloc_steps(args, finish, rest))
        return self._do(ALLOC, args, finish)

    def _alloc_args(self, size, slots, tag, site, finalizer, data, legacy_finalizer):
        """The Alloc arguments, and the data left to write after it (b"" for none)."""
        if data is not None:
            data = bytes(data)
            if not size:
                size = len(data)
            elif len(data) > size:
                raise errors.InvalidArgument(f"{len(data)} bytes of data for a payload of {size}")
        if site is None:
            nframe = self._root._trace_nframe
            site = _caller_site() if nframe == 1 else _caller_traceback(nframe)
        flags = 0
        if finalizer:
            flags |= _OBJ_FINALIZER
        if legacy_finalizer:
            flags |= _OBJ_LEGACY_FINALIZER
        rest = b""
        if data and len(data) > self._chunk():
            data, rest = b"", data  # written after the allocation, in pieces
        return _ALLOC_ARGS(size, slots, tag or "", _clip(site), flags, data or b""), rest

    def _alloc_steps(self, args, finish, data):
        (ref,) = yield [(ALLOC, args, finish)]
        try:
            yield self._write_calls(ref._handle, 0, data)
        except BaseException:
            ref._released = True
            self._defer_decref(ref._handle)
            raise
        return ref

    def alloc_many(self, n, size=0, slots=0, tag=None, site=None, finalizer=False, data=None,
                   legacy_finalizer=False):
        """Allocates ``n`` objects alike in one round trip; returns a list of ``n`` Refs.

        The arguments are :meth:`alloc`'s, for every object.  All or nothing: if any
        allocation fails, the ones that succeeded are released and the first failure is
        raised.
        """
        if not isinstance(n, int) or n < 0:
            raise errors.InvalidArgument(f"bad count {n!r}")
        if site is None:
            nframe = self._root._trace_nframe
            site = _caller_site() if nframe == 1 else _caller_traceback(nframe)
        args, rest = self._alloc_args(size, slots, tag, site, finalizer, data,
                                      legacy_finalizer)
        if rest:
            raise errors.InvalidArgument("alloc_many: data larger than one frame holds")
        finish = _alloc_finish if not callable(finalizer) else _finalizer_finish(finalizer)
        return self._drive(self._many_steps([(ALLOC, args, finish)] * n))

    def _many_steps(self, calls):
        # A step succeeds or fails as a whole: on a failure, the drivers give back what
        # the calls that succeeded took (finish_step).
        results = yield calls
        return results

    def release_many(self, refs):
        """Releases every :class:`Ref` in ``refs`` in one round trip (``release()`` of
        each).  Checked first: if any is already released or from another session, none
        is released and :class:`heapd.ReferenceReleased` or :class:`ValueError` raised."""
        refs = list(refs)
        handles = [self._handle(r) for r in refs]
        if len({id(r) for r in refs}) != len(refs):
            raise ValueError("release_many: the same Ref twice")
        for r in refs:
            r._released = True
        return self._drive(self._steps(
            [(DECREF, _DECREF_ARGS(handle=h, n=1), _none) for h in handles], _none))

    def getrefcount(self, ref):
        """The object's reference count, as ``sys.getrefcount``: the client's references
        plus the slots pointing at it.  Unlike ``sys.getrefcount`` there is no temporary
        reference for the argument, so ``a = s.alloc(); s.getrefcount(a)`` is 1."""
        return self._do(OPS["getrefcount"], OPS["getrefcount"].args(self._handle(ref)), None)

    def getsizeof(self, ref):
        """Bytes the object occupies (header, slots, payload), as ``sys.getsizeof``."""
        return self._do(OPS["getsizeof"], OPS["getsizeof"].args(self._handle(ref)), None)

    def share(self, ref):
        """``ref.share()``: takes another reference to the object; returns a new Ref."""
        h = self._handle(ref)
        return self._do(INCREF, INCREF.args(handle=h, n=1), _shared(h))

    def release(self, ref):
        """``ref.release()``: drops the reference now; the object is freed if it was the
        last one.  Raises :class:`heapd.ReferenceReleased` if it was already released."""
        h = self._handle(ref)
        ref._released = True
        return self._do(DECREF, _DECREF_ARGS(handle=h, n=1), _none)

    def get_slot(self, ref, index):
        """``ref[index]``: a new Ref to the target of slot ``index``, or None if empty."""
        return self._do(GET_SLOT, GET_SLOT.args(self._handle(ref), _slot_index(index)),
                        _adopt_finish)

    def set_slot(self, ref, index, target):
        """``ref[index] = target``: points slot ``index`` at ``target`` (a Ref of this
        session), or empties it for None."""
        h = self._handle(ref)
        if target is None:
            th = 0
        elif isinstance(target, Ref):
            if target._session is not self._root:
                raise ValueError("cannot store a reference from another session")
            th = target._live()
        else:
            raise TypeError(f"slot value must be a heapd.Ref or None, not {type(target).__name__}")
        return self._do(SET_SLOT, SET_SLOT.args(h, _slot_index(index), th), _none)

    def write(self, ref, offset, data):
        """``ref.write(offset, data)``: copies ``data`` into the payload at ``offset``."""
        h = self._handle(ref)
        if not isinstance(offset, int) or offset < 0:
            raise errors.OutOfRange(f"bad offset {offset!r}")
        data = bytes(data)
        calls = self._write_calls(h, offset, data)
        if len(calls) == 1:
            return self._do(WRITE, calls[0][1], _none)
        return self._drive(self._steps(calls, _none))

    def _write_calls(self, handle, offset, data):
        step = self._chunk()
        return [(WRITE, WRITE.args(handle, offset + pos, data[pos:pos + step]), _none)
                for pos in range(0, max(len(data), 1), step)]

    def read(self, ref, offset=0, length=None):
        """``ref.read(offset, length)``: ``length`` payload bytes from ``offset``
        (``None``: to the end)."""
        h = self._handle(ref)
        if not isinstance(offset, int) or offset < 0 or (
                length is not None and (not isinstance(length, int) or length < 0)):
            raise errors.OutOfRange(f"bad offset or length ({offset!r}, {length!r})")
        if length is not None and length <= self._chunk():
            return self._do(READ, READ.args(h, offset, length), None)
        return self._drive(self._read_steps(h, offset, length))

    def _read_steps(self, handle, offset, length):
        if length is None:
            (info,) = yield [(OPS["obj_info"], OPS["obj_info"].args(handle), None)]
            if offset > info.size:
                raise errors.OutOfRange(f"offset {offset} past the payload ({info.size} bytes)")
            length = info.size - offset
        step = self._chunk()
        parts = yield [(READ, READ.args(handle, offset + pos, min(step, length - pos)), None)
                       for pos in range(0, max(length, 1), step)]
        return b"".join(parts)

    def _steps(self, calls, finish):
        """A drive of one exchange; returns ``finish(self, results)`` (or the results)."""
        results = yield calls
        return finish(self, results) if finish is not None else results

    def info(self, ref):
        """``ref.info()``: an :class:`ObjectInfo` describing the object."""
        op = OPS["obj_info"]
        return self._do(op, op.args(self._handle(ref)), _obj_info)

    def _weakref_new(self, ref, callback=None, into=None):
        """``s.weakref(ref, callback)`` (see :class:`heapd._weak.WeakrefModule`): a weak
        reference to ``ref``'s object, made into ``into`` (a WeakRef being initialised) or a
        new :class:`WeakRef`.  ``callback``, if given, is called with the WeakRef when the
        object dies (from the server's event, during a later call on the session)."""
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable")
        h = self._handle(ref)
        op = OPS["weakref_new"]
        return self._do(op, op.args(handle=h, notify=callback is not None),
                        _made(h, callback, into))

    def stats(self):
        """The heap's statistics (the engine's HD_HEAP_STATS_MAP, plus size classes, gc
        counts and event counters) as a dict, like ``sys._debugmallocstats()``."""
        return self._do(OPS["heap_stats"], OPS["heap_stats"].args(), _dict_finish)

    def charges(self):
        """What the session is charged, by kind (the engine's HD_CHARGE_MAP: objects, labels,
        weakrefs, trace, snapshots, cursors, events, collector, buffers, session), with
        ``total`` (what ``max_bytes`` bounds), ``max_bytes``, ``server_charged`` and
        ``max_memory``, as a dict."""
        return self._do(OPS["heap_charges"], OPS["heap_charges"].args(), _dict_finish)

    # -- admin -------------------------------------------------------------------------------

    def server_stats(self):
        """The daemon's counters (sessions, connections, requests, ...) as a dict.
        Needs an admin token (else :class:`heapd.PermissionDenied`)."""
        return self._do(OPS["server_stats"], OPS["server_stats"].args(), _dict_finish)

    def list_sessions(self):
        """Every session on the daemon, as a list of dicts.  Needs an admin token."""
        return self._do(OPS["list_sessions"], OPS["list_sessions"].args(), _sessions_finish)

    def kill_session(self, session_id):
        """Ends another session and frees its heap.  Needs an admin token."""
        return self._do(OPS["kill_session"], OPS["kill_session"].args(session_id), _none)


# -- finishers: (session, value) -> what a method returns -------------------------------------


def _none(session, value):
    return None


def _adopt_finish(session, handle):
    return session._adopt(handle)


def _alloc_finish(session, handle):
    if not handle:  # 0 names no object: a server that answers alloc so is broken
        session._protocol_error("alloc answered with handle 0")
    return session._adopt(handle)


def _finalizer_finish(callback):
    def finish(session, handle):
        ref = _alloc_finish(session, handle)
        # The object cannot die before a later request, and that request sends the
        # event mask (now with FINALIZED) ahead of itself.
        session._finalizers[handle] = callback
        return ref
    return finish


def _shared(handle):
    def finish(session, value):
        return session._adopt(handle)
    return finish


def _obj_info(session, r):
    return ObjectInfo(r.refcount, r.client_refs, r.sizeof_bytes, r.size, r.slots,
                      bool(r.flags & _OBJ_FINALIZER), bool(r.flags & _OBJ_LEGACY_FINALIZER),
                      r.tracked, r.generation, r.tag, r.site)


def _dict_finish(session, msg):
    return message_dict(msg)


def _sessions_finish(session, msg):
    return [message_dict(s) for s in msg.sessions]


def message_dict(msg):
    """A decoded message (namedtuple) as a dict with every field: repeated scalars become
    tuples, nested messages dicts, repeated messages lists of dicts."""
    out = {}
    kinds = msg._heapd_kinds
    for name, value in zip(msg._fields, msg):
        repeated, message = kinds[name]
        if repeated:
            value = [message_dict(v) for v in value] if message else tuple(value)
        elif message and value is not None:
            value = message_dict(value)
        out[name] = value
    return out


def _slot_index(index):
    """Checks a slot index: slots are numbered 0..slots-1, with no negative indexing."""
    if not isinstance(index, int) or isinstance(index, bool):
        raise TypeError(f"slot index must be an int, not {type(index).__name__}")
    if index < 0 or index > 0xFFFFFFFF:
        raise errors.OutOfRange(f"slot index {index}")
    return index


def _clip(text):
    """A site the server takes (a traceback of at most 4096 UTF-8 bytes): the oldest frames
    dropped, a single line too long cut at its start (see _trace.clip_site)."""
    if not isinstance(text, str):
        raise TypeError(f"site must be a str, not {type(text).__name__}")
    if len(text) <= 1024:
        return text
    return clip_site(text)


_HERE = os.path.dirname(os.path.abspath(__file__))
_OWN = {}  # code file name -> True if it is one of this package's files
_SITES = {}  # (code, line) -> "file:line", for the callers seen


def _mine(filename):
    """True if ``filename`` is one of this package's files (the answer cached)."""
    mine = _OWN.get(filename)
    if mine is None:
        mine = _OWN[filename] = os.path.dirname(os.path.abspath(filename)) == _HERE
    return mine


def _caller_traceback(nframe):
    """Up to ``nframe`` frames of the stack outside this package, most recent first, as
    ``tracemalloc.start(nframe)`` records them, formatted as a site (a traceback)."""
    frame = sys._getframe(1)
    frames = []
    while frame is not None and len(frames) < nframe:
        if not _mine(frame.f_code.co_filename):
            frames.append((frame.f_code.co_filename, frame.f_lineno))
        frame = frame.f_back
    return format_site(frames)


def _caller_site():
    """``file:line`` of the first frame outside this package, as tracemalloc records it."""
    frame = sys._getframe(1)
    own = _OWN
    while frame is not None:
        code = frame.f_code
        mine = own.get(code.co_filename)  # _mine() inline: this runs on every allocation
        if mine is None:
            mine = _mine(code.co_filename)
        if not mine:
            break
        frame = frame.f_back
    if frame is None:
        return ""
    key = (code, frame.f_lineno)
    site = _SITES.get(key)
    if site is None:
        if len(_SITES) > 4096:
            _SITES.clear()
        site = _SITES[key] = f"{code.co_filename}:{frame.f_lineno}"
    return site
