#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Tests of the Python client (clients/python/heapd) against a real heapd.

The module starts the built daemon once through the shared fixture (tests/server/harness.py),
with a temporary config that listens on a temporary Unix socket and a free TCP port, and
stops it at the end.  Every public method of the package is exercised here: sessions and
resumption, references and ``del``, scopes, slots and payload, pipelines and batches, the gc,
weakref and tracemalloc mirrors, events and their callbacks, admin requests, and the errors
that mirror the server's status codes.  test_python_asyncio.py and test_python_examples.py
reuse :class:`Daemon`.

Run (ctest does, through heapd_daemon_test): HEAPD_BIN=<build>/bin/heapd
    PYTHONPATH=tests/server:<build>/clients/python /usr/bin/python3 test_python_client.py
"""

import contextlib
import gc as pygc
import io
import os
import re
import socket
import sys
import shutil
import tempfile
import threading
import time
import tracemalloc
import unittest

import harness  # tests/server/harness.py: the one fixture that starts heapd
import heapd

USER_TOKEN = "user-token"
ADMIN_TOKEN = "admin-token"
HEAP_H = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "heap",
                      "heap.h")


class Daemon(harness.Daemon):
    """The shared fixture's daemon (tests/server/harness.py: it waits for READY=1 and checks
    the exit and the sanitizers at stop), with the Python tests' defaults and URLs.

    ``config`` entries override DEFAULTS (keys as in config/heapd.yaml).
    """

    DEFAULTS = {
        "workers": 2,
        "log_level": "info",
        "max_frame_bytes": "64KiB",  # small, so that reads and writes are chunked
        "session_max_bytes": "32MiB",
        "session_linger": "60s",
        "tokens": [USER_TOKEN],
        "admin_tokens": [ADMIN_TOKEN],
    }

    def __init__(self, **config):
        super().__init__(dict(self.DEFAULTS, **config))

    @property
    def socket(self):
        return self.unix_addr

    @property
    def url(self):
        return f"unix:{self.unix_addr}"

    @property
    def tcp_port(self):
        return self.tcp_addr[1]

    @property
    def tcp_url(self):
        return f"tcp://127.0.0.1:{self.tcp_addr[1]}"

    def stop(self, show_log=False):
        if show_log:
            sys.stderr.write("--- heapd log ---\n" + "\n".join(self.log())
                             + "\n--- end of heapd log ---\n")
        return super().stop()


DAEMON = None
FAILED = False


def setUpModule():
    global DAEMON
    DAEMON = Daemon().start()


def tearDownModule():
    if DAEMON is not None:
        DAEMON.stop(show_log=FAILED)


class HeapdTestCase(unittest.TestCase):
    """Opens one session per test (``self.s``) and checks the heap is empty at the end."""

    check_empty = True

    def connect(self, **kwargs):
        kwargs.setdefault("token", USER_TOKEN)
        kwargs.setdefault("timeout", 30)
        s = heapd.connect(kwargs.pop("url", DAEMON.url), **kwargs)
        self.addCleanup(s.close)
        return s

    def setUp(self):
        self.s = self.connect()

    def tearDown(self):
        global FAILED
        outcome = getattr(self, "_outcome", None)
        if outcome is not None and not getattr(outcome, "success", True):
            FAILED = True

    def objects(self, s=None):
        """Live objects in the heap, after sending the queued releases."""
        return (s or self.s).stats()["objects"]


# -----------------------------------------------------------------------------------------
# Sessions and connections.
# -----------------------------------------------------------------------------------------


class SessionTest(HeapdTestCase):
    def test_hello_fields(self):
        s = self.s
        self.assertRegex(s.session_id, r"^[0-9a-f]{16}$")
        self.assertRegex(s.resume_token, r"^[0-9a-f]{32}$")
        self.assertTrue(s.server_version)
        self.assertFalse(s.resumed)
        self.assertFalse(s.admin)
        self.assertIsInstance(s.limits, heapd.Limits)
        self.assertEqual(s.limits.max_frame_bytes, 64 * 1024)
        self.assertEqual(s.limits.max_bytes, 32 << 20)
        self.assertGreater(s.limits.max_read_bytes, 0)
        self.assertTrue(s.connected)
        self.assertFalse(s.closed)
        self.assertIn(s.session_id, repr(s))

    def test_tcp_and_unix(self):
        for url in (DAEMON.url, DAEMON.tcp_url):
            with heapd.connect(url, token=USER_TOKEN) as s:
                with s.alloc(data=b"x") as r:
                    self.assertEqual(r.read(), b"x")

    def test_environment_defaults(self):
        env = {"HEAPD_URL": DAEMON.tcp_url, "HEAPD_TOKEN": USER_TOKEN}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with heapd.connect() as s:
                self.assertEqual(s.url, DAEMON.tcp_url)
                self.assertGreater(s.ping(), 0)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def test_url_forms(self):
        # The forms of heapctl --connect: tcp://h:p, h:p, unix:/path, /path.
        for url in (DAEMON.tcp_url, f"127.0.0.1:{DAEMON.tcp_port}", f"unix:{DAEMON.socket}",
                    f"unix://{DAEMON.socket}", DAEMON.socket):
            with heapd.connect(url, token=USER_TOKEN) as s:
                self.assertEqual(s.url, url)
                self.assertGreater(s.ping(), 0)
        old = os.environ.get("HEAPD_URL")
        os.environ["HEAPD_URL"] = DAEMON.socket
        try:
            with heapd.connect(token=USER_TOKEN) as s:
                self.assertEqual(s.url, DAEMON.socket)
                self.assertGreater(s.ping(), 0)
        finally:
            if old is None:
                os.environ.pop("HEAPD_URL")
            else:
                os.environ["HEAPD_URL"] = old
        with self.assertRaises(ValueError):
            heapd.connect("http://127.0.0.1:1")

    def test_implementation(self):
        self.assertIn(heapd.implementation, ("c", "python"))
        want = os.environ.get("HEAPD_PYTHON_IMPLEMENTATION")
        if want:
            self.assertEqual(heapd.implementation, want)

    def test_bad_token(self):
        with self.assertRaises(heapd.AuthenticationFailed):
            heapd.connect(DAEMON.url, token="wrong")
        with self.assertRaises(heapd.AuthenticationFailed):
            heapd.connect(DAEMON.url, token="")

    def test_ping(self):
        now = time.time_ns()
        self.assertLess(abs(self.s.ping() - now), 60 * 10**9)

    def test_context_manager_says_goodbye(self):
        with self.connect() as s:
            sid, tok = s.session_id, s.resume_token
            ref = s.alloc(size=8)
            w = s.weakref(ref)
            s.tracemalloc.start()
            traced = s.alloc(tag="traced")
            snap = s.tracemalloc.take_snapshot()
            del traced
        self.assertTrue(s.closed)
        self.assertFalse(s.connected)
        with self.assertRaises(heapd.NoSuchSession):
            heapd.connect(DAEMON.url, token=USER_TOKEN, resume=(sid, tok))
        with self.assertRaises(heapd.ConnectionClosed):
            s.ping()
        with self.assertRaises(heapd.Error):
            ref.read()
        del ref  # a Ref of a closed session is dropped quietly
        s.close()  # closing twice is fine
        w.close()  # so is closing what the session held
        self.assertEqual(len(snap.traces), 1)  # a snapshot is the client's: it stays

    def test_close_method(self):
        s = self.connect()
        s.close()
        self.assertTrue(s.closed)
        with self.assertRaises(heapd.ConnectionClosed):
            s.alloc()
        with self.assertRaises(heapd.ConnectionClosed):
            s.reconnect()

    def test_detach_and_resume_in_new_session(self):
        s = self.connect()
        ref = s.alloc(size=5, data=b"hello", tag="Kept")
        handle = ref.forget()
        sid, tok = s.detach()
        self.assertEqual((sid, tok), (s.session_id, s.resume_token))
        self.assertFalse(s.connected)
        self.assertFalse(s.closed)
        with self.assertRaises(heapd.ConnectionClosed):
            s.ping()
        s2 = self.connect(resume=(sid, tok))
        self.assertTrue(s2.resumed)
        self.assertEqual(s2.session_id, sid)
        kept = s2.adopt(handle)
        self.assertEqual(kept.read(), b"hello")
        self.assertEqual(kept.info().tag, "Kept")
        self.assertEqual(s2.getrefcount(kept), 1)
        kept.release()
        self.assertEqual(self.objects(s2), 0)

    def test_resume_after_dropped_connection(self):
        s = self.s
        a = s.alloc(slots=1, data=b"abc", tag="A")
        b = a.share()
        # Drop the connection under the session, as a network failure would.
        s._sock.shutdown(socket.SHUT_RDWR)
        with self.assertRaises(heapd.ConnectionClosed):
            s.getrefcount(a)
        self.assertFalse(s.connected)
        del b  # queued while disconnected; sent after the resume
        with self.assertRaises(heapd.ConnectionClosed):
            s.stats()
        s.reconnect()
        self.assertTrue(s.resumed)
        self.assertTrue(s.connected)
        self.assertEqual(a.read(), b"abc")
        self.assertEqual(s.getrefcount(a), 1)
        a.release()
        self.assertEqual(self.objects(), 0)

    def test_resume_keeps_callbacks_working(self):
        s = self.s
        seen = []
        s.on_finalize = seen.append
        a = s.alloc(finalizer=True, tag="F")
        s.detach()
        s.reconnect()
        a.release()
        self.assertEqual([ev.tag for ev in seen], ["F"])

    def test_resume_errors(self):
        s = self.connect()
        sid, tok = s.session_id, s.resume_token
        with self.assertRaises(heapd.SessionBusy):
            heapd.connect(DAEMON.url, token=USER_TOKEN, resume=(sid, tok), resume_wait=0.2)
        with self.assertRaises(heapd.AuthenticationFailed):
            heapd.connect(DAEMON.url, token=USER_TOKEN, resume=(sid, "0" * 32))
        with self.assertRaises(heapd.NoSuchSession):
            heapd.connect(DAEMON.url, token=USER_TOKEN, resume=("0" * 16, tok))

    def test_threads_share_a_session(self):
        s = self.s
        errors = []

        def work():
            try:
                for _ in range(50):
                    with s.alloc(size=16, data=b"t" * 16) as r:
                        self.assertEqual(r.read(), b"t" * 16)
            except Exception as exc:  # reported to the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(self.objects(), 0)

    def test_poll(self):
        self.assertEqual(self.s.poll(), 0)
        self.assertEqual(self.s.poll(timeout=0.05), 0)

    def test_unclosed_session_warns(self):
        s = heapd.connect(DAEMON.url, token=USER_TOKEN)
        with self.assertWarns(ResourceWarning):
            del s
            pygc.collect()


class ServerEndsConnectionTest(unittest.TestCase):
    """A daemon of its own with a 1 s idle timeout: the server ends idle connections."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(idle_timeout="1s").start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def connect(self):
        s = heapd.connect(self.daemon.url, token=USER_TOKEN, timeout=30)
        self.addCleanup(s.close)
        return s

    def test_idle_timeout_then_resume(self):
        s = self.connect()
        a = s.alloc(data=b"still here")
        with self.assertRaises(heapd.IdleTimeout):
            s.poll(timeout=10)  # the server's last word arrives after a second
        self.assertFalse(s.connected)
        with self.assertRaises(heapd.ConnectionClosed):
            a.read()
        s.reconnect()
        self.assertTrue(s.resumed)
        self.assertEqual(a.read(), b"still here")

    def test_idle_timeout_seen_by_next_call(self):
        s = self.connect()
        a = s.alloc()
        b = a.share()
        time.sleep(2.5)
        del b  # queued; the next call finds the connection ended
        with self.assertRaises(heapd.IdleTimeout):
            s.ping()
        s.reconnect()
        # The release was kept for the resumed connection, not lost.
        self.assertEqual(s.getrefcount(a), 1)


# -----------------------------------------------------------------------------------------
# References.
# -----------------------------------------------------------------------------------------


class RefTest(HeapdTestCase):
    def test_alloc_defaults(self):
        r = self.s.alloc()
        self.assertIsInstance(r, heapd.Ref)
        self.assertIsInstance(r.handle, int)
        self.assertGreater(r.handle, 0)
        self.assertIs(r.session, self.s)
        self.assertFalse(r.released)
        info = r.info()
        self.assertIsInstance(info, heapd.ObjectInfo)
        self.assertEqual((info.size, info.slots, info.tag), (0, 0, ""))
        self.assertEqual((info.refcount, info.client_refs), (1, 1))
        self.assertFalse(info.tracked)
        self.assertEqual(info.generation, -1)
        self.assertFalse(info.finalizer)
        self.assertIn(f"{r.handle:#x}", repr(r))

    def test_alloc_arguments(self):
        line = sys._getframe().f_lineno + 1
        r = self.s.alloc(size=10, slots=3, tag="Node", data=b"abc", finalizer=True)
        info = r.info()
        self.assertEqual((info.size, info.slots, info.tag), (10, 3, "Node"))
        self.assertTrue(info.tracked)
        self.assertEqual(info.generation, 0)
        self.assertTrue(info.finalizer)
        self.assertFalse(info.legacy_finalizer)
        self.assertEqual(info.site, f"{__file__}:{line}")
        self.assertEqual(r.read(), b"abc" + bytes(7))
        self.assertEqual(self.s.alloc(site="app.py:42").info().site, "app.py:42")
        self.assertEqual(self.s.alloc(site="").info().site, "")
        self.assertEqual(self.s.alloc(data=b"12345").info().size, 5)
        self.assertTrue(self.s.alloc(legacy_finalizer=True).info().legacy_finalizer)

    def test_alloc_clips_long_site(self):
        site = "/very/long/path" * 30 + "/app.py:7"
        self.assertEqual(self.s.alloc(site=site).info().site[-9:], "/app.py:7")

    def test_share_and_release(self):
        a = self.s.alloc(slots=1)
        b = a.share()
        self.assertIsNot(a, b)
        self.assertEqual(a, b)
        self.assertEqual(hash(a), hash(b))
        self.assertEqual(self.s.getrefcount(a), 2)
        a.release()
        self.assertTrue(a.released)
        self.assertIn("released", repr(a))
        self.assertEqual(self.s.getrefcount(b), 1)
        self.assertNotEqual(b, self.s.alloc())
        b.release()
        self.assertEqual(self.objects(), 0)

    def test_use_after_release(self):
        other = self.s.alloc(slots=1)
        a = self.s.alloc(slots=1, size=4)
        handle = a.handle
        a.release()
        self.assertEqual(a.handle, handle)
        for use in (a.share, a.release, a.info, a.forget, lambda: a[0], lambda: a.read(),
                    lambda: a.write(0, b"x"), lambda: a.__setitem__(0, None),
                    lambda: other.__setitem__(0, a), lambda: self.s.getrefcount(a),
                    lambda: self.s.getsizeof(a), lambda: self.s.weakref(a),
                    lambda: self.s.gc.is_tracked(a)):
            with self.assertRaises(heapd.ReferenceReleased):
                use()
            with self.assertRaises(heapd.Error):
                use()
        with self.assertRaises(ValueError):
            a.release()

    def test_del_releases(self):
        a = self.s.alloc(slots=1, tag="list")  # a = []
        b = a.share()  # b = a
        self.assertEqual(self.s.getrefcount(b), 2)
        del a
        self.assertEqual(self.s.getrefcount(b), 1)
        del b
        self.assertEqual(self.objects(), 0)

    def test_flush_sends_queued_releases(self):
        a = self.s.alloc(tag="gone")
        del a
        # Queued: nothing is sent yet (no callback waits for deaths), so the server still
        # holds the object until the next request; flush() is such a request.
        self.assertEqual(self.s._deferred and len(self.s._deferred), 1)
        self.s.flush()
        self.assertEqual(len(self.s._deferred), 0)
        self.assertEqual(self.objects(), 0)

    def test_del_with_finalizer_callback_runs_it_at_once(self):
        # With a callback waiting for deaths, `del` releases at once when the session is
        # idle, so the callback runs at the del, as __del__ does in CPython.
        seen = []
        self.s.on_finalize = seen.append
        a = self.s.alloc(finalizer=True, tag="gone")
        del a
        self.assertEqual([ev.tag for ev in seen], ["gone"])
        # While a call is in progress (here: as a Ref's __del__ would run in the middle of
        # the client's own code), the release waits for the next request.
        h = self.s.alloc(finalizer=True, tag="later").forget()
        self.s._busy += 1
        try:
            self.s._release_later(h)
        finally:
            self.s._busy -= 1
        self.assertEqual([ev.tag for ev in seen], ["gone"])
        self.s.flush()
        self.assertEqual([ev.tag for ev in seen], ["gone", "later"])
        # So does a del in another thread while this one holds the session.
        h = self.s.alloc(finalizer=True, tag="thread").forget()
        with self.s._lock:
            t = threading.Thread(target=self.s._release_later, args=(h,))
            t.start()
            t.join()
            self.assertEqual(len(seen), 2)
        self.s.flush()
        self.assertEqual([ev.tag for ev in seen], ["gone", "later", "thread"])
        # A callback may call the session, so a del inside one releases at once.
        c = [self.s.alloc(finalizer=True, tag="in callback")]
        order = []

        def drop(phase, info):
            if phase == "start" and c:
                c.clear()
                order.append(len(seen))
        self.s.gc.callbacks.append(drop)
        self.s.gc.collect()
        self.s.gc.callbacks.clear()
        self.assertEqual(order, [4])
        self.assertEqual(seen[-1].tag, "in callback")

    def test_many_dels_in_one_batch(self):
        refs = [self.s.alloc(size=8) for _ in range(300)]
        shared = [r.share() for r in refs[:100]]
        self.assertEqual(self.objects(), 300)
        del refs, shared
        self.assertEqual(self.objects(), 0)

    def test_ref_context_manager(self):
        with self.s.alloc(size=4) as r:
            self.assertEqual(self.objects(), 1)
        self.assertTrue(r.released)
        self.assertEqual(self.objects(), 0)
        with self.s.alloc() as r:
            r.release()  # releasing inside the block is fine

    def test_forget_and_adopt(self):
        a = self.s.alloc(size=3, data=b"xyz")
        handle = a.forget()
        self.assertTrue(a.released)
        del a
        self.assertEqual(self.objects(), 1)
        b = self.s.adopt(handle)
        self.assertEqual(b.read(), b"xyz")
        del b
        self.assertEqual(self.objects(), 0)
        for bad in (0, -1, 1 << 64, "1"):
            with self.assertRaises(heapd.InvalidArgument):
                self.s.adopt(bad)

    def test_slots(self):
        s = self.s
        a = s.alloc(slots=2, tag="A")
        b = s.alloc(tag="B")
        self.assertIsNone(a[0])
        a[0] = b
        self.assertEqual(s.getrefcount(b), 2)
        c = a[0]
        self.assertEqual(c, b)
        self.assertEqual(s.getrefcount(b), 3)
        c.release()
        a[1] = a  # a self-reference
        self.assertEqual(s.getrefcount(a), 2)
        self.assertEqual(list(a), [b, a])
        a[1] = None
        del a[0]
        self.assertEqual(list(a), [None, None])
        self.assertEqual(s.getrefcount(b), 1)
        with self.assertRaises(heapd.OutOfRange):
            a[2]
        with self.assertRaises(IndexError):
            a[2] = b
        with self.assertRaises(IndexError):
            a[-1]
        with self.assertRaises(TypeError):
            a[0] = 5
        with self.assertRaises(TypeError):
            a["x"]
        with self.assertRaises(IndexError):
            b[0]  # an atomic object has no slots
        self.assertEqual(list(b), [])

    def test_slot_from_another_session(self):
        other = self.connect()
        with self.s.alloc(slots=1) as a, other.alloc() as foreign:
            with self.assertRaises(ValueError):
                a[0] = foreign

    def test_slot_keeps_object_alive(self):
        a = self.s.alloc(slots=1)
        with self.s.alloc(data=b"kept") as b:
            a[0] = b
        self.assertEqual(self.objects(), 2)
        with a[0] as again:
            self.assertEqual(again.read(), b"kept")
        a.release()
        self.assertEqual(self.objects(), 0)

    def test_read_write(self):
        r = self.s.alloc(size=16)
        self.assertEqual(r.read(), bytes(16))
        r.write(4, b"abcd")
        r.write(0, bytearray(b"01"))
        self.assertEqual(r.read(), b"01\0\0abcd" + bytes(8))
        self.assertEqual(r.read(4, 4), b"abcd")
        self.assertEqual(r.read(12), bytes(4))
        self.assertEqual(r.read(16), b"")
        self.assertEqual(r.read(3, 0), b"")
        r.write(16, b"")
        with self.assertRaises(heapd.OutOfRange):
            r.write(14, b"xyz")
        with self.assertRaises(heapd.OutOfRange):
            r.read(10, 7)
        with self.assertRaises(heapd.OutOfRange):
            r.read(17)
        with self.assertRaises(IndexError):
            r.read(-1)
        with self.assertRaises(IndexError):
            r.write(-1, b"x")

    def test_large_payload_is_chunked(self):
        # Larger than max_frame_bytes (64 KiB): alloc, write and read go in chunks.
        big = os.urandom(200_000)
        r = self.s.alloc(data=big)
        self.assertEqual(r.info().size, len(big))
        self.assertEqual(r.read(), big)
        r.write(70_000, b"\xff" * 100_000)
        self.assertEqual(r.read(69_999, 100_002),
                         big[69_999:70_000] + b"\xff" * 100_000 + big[170_000:170_001])

    def test_getrefcount_getsizeof(self):
        s = self.s
        small = s.alloc(size=8)
        large = s.alloc(size=4096, slots=4)
        self.assertEqual(s.getrefcount(small), 1)
        self.assertGreaterEqual(s.getsizeof(small), 8)
        self.assertGreater(s.getsizeof(large), 4096 + 4 * 4)
        self.assertEqual(small.info().sizeof, s.getsizeof(small))
        with self.assertRaises(TypeError):
            s.getrefcount(small.handle)

    def test_stats(self):
        st = self.s.stats()
        with open(HEAP_H, encoding="utf-8") as f:
            names = re.findall(r"XX\((\w+), \"", f.read().split("HD_HEAP_STATS_MAP(XX)")[1]
                               .split("typedef")[0])
        for name in names:
            self.assertIn(name, st)
        self.assertEqual(st["objects"], 0)
        with self.s.alloc(size=8, slots=1):
            st = self.s.stats()
            self.assertEqual((st["objects"], st["containers"]), (1, 1))
            self.assertIsInstance(st["classes"], list)
            self.assertEqual(len(st["gc"]), 3)
            self.assertEqual(len(st["gc_count"]), 3)
            self.assertIn("block_size", st["classes"][0])

    def test_charges(self):
        # One key per entry of HD_CHARGE_MAP, adding up to the total max_bytes bounds.
        with open(HEAP_H, encoding="utf-8") as f:
            names = re.findall(r"XX\((\w+), \"", f.read().split("HD_CHARGE_MAP(XX)")[1]
                               .split("typedef")[0])
        self.assertIn("objects", names)
        with self.s.alloc(size=8):
            ch = self.s.charges()
            self.assertEqual(sum(ch[n] for n in names), ch["total"])
            self.assertGreaterEqual(ch["objects"], 16384)
            self.assertEqual(ch["max_bytes"], 32 << 20)
            self.assertGreaterEqual(ch["server_charged"], ch["total"])


# -----------------------------------------------------------------------------------------
# Errors.
# -----------------------------------------------------------------------------------------


class ErrorTest(HeapdTestCase):
    def test_invalid_argument(self):
        with self.assertRaises(heapd.InvalidArgument) as cm:
            self.s.alloc(slots=70000)
        self.assertIsInstance(cm.exception, ValueError)
        self.assertEqual(cm.exception.code, 1)
        self.assertEqual(cm.exception.name, "EINVAL")
        with self.assertRaises(ValueError):
            self.s.alloc(tag="x" * 300)
        with self.assertRaises(ValueError):
            self.s.alloc(size=2, data=b"abc")

    def test_limit_is_memory_error(self):
        with self.assertRaises(heapd.LimitReached):
            self.s.alloc(size=33 << 20)
        with self.assertRaises(MemoryError):
            self.s.alloc(size=33 << 20)
        self.assertEqual(self.objects(), 0)

    def test_no_such_object(self):
        a = self.s.alloc()
        handle = a.forget()
        stale = self.s.adopt(handle)
        self.s.adopt(handle).release()  # frees the object
        with self.assertRaises(heapd.NoSuchObject) as cm:
            self.s.getrefcount(stale)
        text = str(cm.exception)
        self.assertTrue(text.startswith("[ENOOBJ] no such object"), text)
        self.assertEqual(text.count("no such object"), 1, text)
        self.assertIn(f"{handle:#018x}", text)
        with self.assertRaises(heapd.NoSuchObject):
            stale.release()
        with self.assertRaises(heapd.NoSuchObject):
            self.s.adopt(handle ^ (1 << 40)).info()

    def test_not_enough_references(self):
        holder = self.s.alloc(slots=1)
        a = self.s.alloc()
        holder[0] = a
        handle = a.forget()
        first, second = self.s.adopt(handle), self.s.adopt(handle)
        first.release()  # the client's only reference; the slot keeps the object
        with self.assertRaises(heapd.NotEnoughReferences):
            second.release()

    def test_deferred_failure_warns(self):
        a = self.s.alloc()
        handle = a.forget()
        self.s.adopt(handle).release()
        ghost = self.s.adopt(handle)
        del ghost  # its deferred decref fails on the server
        with self.assertWarns(RuntimeWarning):
            self.s.ping()

    def test_error_keeps_session_usable(self):
        with self.assertRaises(heapd.OutOfRange):
            with self.s.alloc(size=1) as r:
                r.read(0, 2)
        self.assertGreater(self.s.ping(), 0)


# -----------------------------------------------------------------------------------------
# Pipelines and batches.
# -----------------------------------------------------------------------------------------


class CountingSocket:
    """Wraps a session's socket to count its writes."""

    def __init__(self, sock):
        self._sock = sock
        self.writes = 0

    def sendall(self, data):
        self.writes += 1
        return self._sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class PipelineTest(HeapdTestCase):
    def count_writes(self):
        counter = CountingSocket(self.s._sock)
        self.s._sock = counter
        self.addCleanup(lambda: setattr(self.s, "_sock", counter._sock)
                        if self.s._sock is counter else None)
        return counter

    def test_results_in_order_in_one_write(self):
        s = self.s
        holder = s.alloc(slots=2)
        writes = self.count_writes()
        with s.pipeline() as p:
            self.assertIs(p.alloc(size=8, tag="a"), p)  # calls chain, as in redis-py
            p.ping().getrefcount(holder).get_slot(holder, 0)
            p.set_slot(holder, 1, holder)
            p.info(holder).gc.collect()
            p.write(holder, 0, b"").getsizeof(holder)
            self.assertEqual(len(p), 9)
        self.assertEqual(writes.writes, 1)
        r = p.results
        self.assertEqual(len(r), 9)
        self.assertIsInstance(r[0], heapd.Ref)
        self.assertEqual(r[0].info().tag, "a")
        self.assertIsInstance(r[1], int)
        self.assertEqual(r[2], 1)
        self.assertIsNone(r[3])
        self.assertIsNone(r[4])
        self.assertIsInstance(r[5], heapd.ObjectInfo)
        self.assertEqual(r[5].refcount, 2)  # in order: after the set_slot
        self.assertEqual(r[6], 0)
        self.assertEqual(r[8], s.getsizeof(holder))
        holder[1] = None

    def test_many_calls_in_the_window(self):
        s = self.s
        writes = self.count_writes()
        with s.pipeline() as p:
            for _ in range(10000):
                p.alloc(size=8)
        self.assertGreater(writes.writes, 1)  # written in windows, not all at once
        self.assertEqual(len(p.results), 10000)
        self.assertEqual(len({r.handle for r in p.results}), 10000)
        self.assertEqual(self.objects(), 10000)
        with s.pipeline() as q:
            for r in p.results:
                q.release(r)
        self.assertEqual(self.objects(), 0)

    def test_execute_inside_the_block(self):
        s = self.s
        with s.pipeline() as p:
            p.ping()
            first = p.execute()
            self.assertEqual(len(first), 1)
            p.alloc()
        self.assertEqual(len(p.results), 1)
        self.assertIsInstance(p.results[0], heapd.Ref)
        with s.pipeline() as p:
            pass
        self.assertIsNone(p.results)
        self.assertEqual(p.execute(), [])

    def test_failures_raise_after_every_result(self):
        s = self.s
        a = s.alloc()
        stale = s.adopt(a.forget())
        s.adopt(stale.handle).release()  # frees the object: stale's handle is dead
        with self.assertRaises(heapd.NoSuchObject) as cm:
            with s.pipeline() as p:
                p.alloc(tag="before")
                p.getrefcount(stale)
                p.alloc(tag="after")
        notes = getattr(cm.exception, "__notes__", [])
        self.assertIn("(call 2 of 3: getrefcount)", notes)
        # Every call ran, and its result is kept: the Refs are not lost.
        self.assertEqual([r.info().tag for r in (p.results[0], p.results[2])],
                         ["before", "after"])
        self.assertIs(p.results[1], cm.exception)
        stale.forget()

    def test_failures_as_objects(self):
        s = self.s
        with s.pipeline(raise_on_error=False) as p:
            p.alloc(slots=70000)  # EINVAL
            p.alloc(size=64 << 20)  # over the session's bytes
            p.ping()
        self.assertIsInstance(p.results[0], heapd.InvalidArgument)
        self.assertIsInstance(p.results[1], MemoryError)
        self.assertIsInstance(p.results[2], int)
        # raise_on_error given to execute() wins over the pipeline's.
        p = s.pipeline()
        p.alloc(slots=70000)
        results = p.execute(raise_on_error=False)
        self.assertIsInstance(results[0], heapd.InvalidArgument)

    def test_exception_in_block_sends_nothing(self):
        s = self.s
        a = s.alloc(tag="kept")
        b = s.alloc(tag="released")
        writes = self.count_writes()
        with self.assertRaises(ZeroDivisionError):
            with s.pipeline() as p:
                p.alloc()
                p.release(b)
                1 / 0
        self.assertEqual(writes.writes, 0)
        self.assertTrue(b.released)
        # The release queued in the abandoned pipeline is kept for the next request.
        self.assertEqual(self.objects(), 1)
        self.assertEqual(a.info().tag, "kept")

    def test_release_in_a_pipeline(self):
        s = self.s
        refs = [s.alloc() for _ in range(5)]
        with s.pipeline() as p:
            for r in refs:
                p.release(r)
                self.assertTrue(r.released)
            with self.assertRaises(heapd.ReferenceReleased):
                p.release(refs[0])
        self.assertEqual(p.results, [None] * 5)
        self.assertEqual(self.objects(), 0)

    def test_multi_round_trip_calls_are_refused(self):
        s = self.s
        big = s.alloc(size=200 << 10)
        with s.pipeline() as p:
            with self.assertRaises(TypeError):
                p.gc.get_objects()
            with self.assertRaises(TypeError):
                p.alloc_many(3)
            with self.assertRaises(TypeError):
                p.read(big)  # to the end: needs the size first
            with self.assertRaises(TypeError):
                p.gc.garbage
            p.read(big, 0, 16)
        self.assertEqual(p.results, [bytes(16)])

    def test_events_in_a_pipeline(self):
        s = self.s
        seen = []
        s.on_finalize = seen.append
        refs = [s.alloc(finalizer=True, tag=f"t{i}") for i in range(3)]
        with s.pipeline() as p:
            for r in refs:
                p.release(r)
        # The pipeline waited for the events its calls raised.
        self.assertEqual([ev.tag for ev in seen], ["t0", "t1", "t2"])

    def test_interrupted_exchange_gives_back_its_references(self):
        s = self.s
        real = s._receive
        calls = {"n": 0}

        def interrupt():
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt
            return real()
        s._receive = interrupt
        try:
            with self.assertRaises(KeyboardInterrupt):
                with s.pipeline() as p:
                    for _ in range(20):
                        p.alloc()
        finally:
            s._receive = real
        # The answers come later; the handles they hold are released, not leaked.
        self.assertEqual(self.objects(), 0)
        self.assertTrue(s.connected)


class ManyTest(HeapdTestCase):
    def test_alloc_many_and_release_many(self):
        s = self.s
        refs = s.alloc_many(1000, size=8, slots=1, tag="Many")
        self.assertEqual(len(refs), 1000)
        self.assertEqual(len({r.handle for r in refs}), 1000)
        self.assertTrue(all(isinstance(r, heapd.Ref) for r in refs))
        self.assertEqual(refs[7].info().tag, "Many")
        self.assertEqual(refs[7].info().site, f"{__file__}:{sys._getframe().f_lineno - 5}")
        self.assertEqual(self.objects(), 1000)
        self.assertIsNone(s.release_many(refs))
        self.assertTrue(all(r.released for r in refs))
        self.assertEqual(self.objects(), 0)
        self.assertEqual(s.alloc_many(0), [])
        s.release_many([])

    def test_alloc_many_is_all_or_nothing(self):
        s = self.s
        keep = s.alloc()
        with self.assertRaises(heapd.LimitReached):
            s.alloc_many(3, size=12 << 20)  # the third is over the session's 32 MiB
        self.assertEqual(self.objects(), 1)
        with self.assertRaises(heapd.InvalidArgument):
            s.alloc_many(-1)
        keep.release()

    def test_release_many_checks_first(self):
        s = self.s
        refs = s.alloc_many(3)
        refs[1].release()
        with self.assertRaises(heapd.ReferenceReleased):
            s.release_many(refs)
        self.assertFalse(refs[0].released)
        self.assertEqual(self.objects(), 2)
        with self.assertRaises(ValueError):
            s.release_many([refs[0], refs[0]])
        with self.assertRaises(TypeError):
            s.release_many([object()])
        other = self.connect()
        with self.assertRaises(ValueError):
            s.release_many([other.alloc()])
        s.release_many([refs[0], refs[2]])
        self.assertEqual(self.objects(), 0)

    def test_alloc_many_with_finalizer_callbacks(self):
        s = self.s
        seen = []
        refs = s.alloc_many(4, finalizer=seen.append, tag="F")
        s.release_many(refs)
        self.assertEqual([ev.tag for ev in seen], ["F"] * 4)


# -----------------------------------------------------------------------------------------
# Scopes.
# -----------------------------------------------------------------------------------------


class ScopeTest(HeapdTestCase):
    def test_scope_releases(self):
        s = self.s
        outside = s.alloc(tag="outside")
        with s.scope() as scope:
            self.assertIsInstance(scope, heapd.Scope)
            a = s.alloc(slots=1)
            b = a.share()
            a[0] = outside
            c = a[0]
            early = s.alloc()
            early.release()
            self.assertEqual(self.objects(), 2)
        for r in (a, b, c):
            self.assertTrue(r.released)
        self.assertFalse(outside.released)
        self.assertEqual(self.objects(), 1)
        self.assertEqual(s.getrefcount(outside), 1)

    def test_nested_scopes_and_keep(self):
        s = self.s
        with s.scope() as outer:
            with s.scope() as inner:
                kept = inner.keep(s.alloc(tag="kept"))
                s.alloc(tag="dropped")
                tmp = s.alloc(tag="tmp")
            self.assertTrue(tmp.released)
            self.assertFalse(kept.released)
            with self.assertRaises(ValueError):
                inner.keep(kept)
            self.assertEqual(self.objects(), 1)
        self.assertTrue(kept.released)
        self.assertEqual(self.objects(), 0)
        del outer

    def test_keep_at_top_level(self):
        with self.s.scope() as frame:
            r = frame.keep(self.s.alloc())
        self.assertFalse(r.released)
        self.assertEqual(self.objects(), 1)

    def test_scope_on_exception(self):
        with self.assertRaises(KeyError):
            with self.s.scope():
                r = self.s.alloc()
                raise KeyError("boom")
        self.assertTrue(r.released)
        self.assertEqual(self.objects(), 0)

    def test_scope_tracks_gc_and_weakref_results(self):
        s = self.s
        a = s.alloc(slots=1)
        b = s.alloc()
        a[0] = b
        w = s.weakref(b)
        with s.scope():
            got = [w(), *s.gc.get_referrers(b), *s.gc.get_referents(a),
                   *s.gc.get_objects()]
            self.assertEqual(s.getrefcount(b), 4)
        self.assertTrue(all(r.released for r in got))
        self.assertEqual(s.getrefcount(b), 2)

    def test_scopes_are_per_thread(self):
        s = self.s
        made = []
        with s.scope():
            t = threading.Thread(target=lambda: made.append(s.alloc()))
            t.start()
            t.join()
        self.assertFalse(made[0].released)
        self.assertEqual(self.objects(), 1)

    def test_release_all(self):
        with self.s.scope() as frame:
            r = self.s.alloc()
            frame.release_all()
            self.assertTrue(r.released)
            self.assertEqual(self.objects(), 0)


# -----------------------------------------------------------------------------------------
# The gc mirror.
# -----------------------------------------------------------------------------------------


class GcTest(HeapdTestCase):
    def make_cycle(self, tag="Node", **kwargs):
        a = self.s.alloc(slots=1, tag=tag, **kwargs)
        b = self.s.alloc(slots=1, tag=tag, **kwargs)
        a[0] = b
        b[0] = a
        return a, b

    def test_collect_cycle(self):
        a, b = self.make_cycle()
        del a, b
        self.assertEqual(self.objects(), 2)
        self.assertEqual(self.s.gc.collect(), 2)
        self.assertEqual(self.objects(), 0)
        self.assertEqual(self.s.gc.collect(0), 0)
        self.assertEqual(self.s.gc.collect(generation=1), 0)
        with self.assertRaises(ValueError):
            self.s.gc.collect(3)

    def test_enable_disable(self):
        gc = self.s.gc
        self.assertTrue(gc.isenabled())
        gc.disable()
        self.assertFalse(gc.isenabled())
        gc.enable()
        self.assertTrue(gc.isenabled())

    def test_thresholds_and_counts(self):
        gc = self.s.gc
        self.assertEqual(gc.get_threshold(), (700, 10, 10))
        self.assertEqual(gc.get_count(), (0, 0, 0))
        refs = [self.s.alloc(slots=1) for _ in range(5)]
        self.assertEqual(gc.get_count()[0], 5)
        gc.set_threshold(100)
        self.assertEqual(gc.get_threshold(), (100, 10, 10))
        gc.set_threshold(50, 5)
        self.assertEqual(gc.get_threshold(), (50, 5, 10))
        gc.set_threshold(3, 2, 1)
        self.assertEqual(gc.get_threshold(), (3, 2, 1))
        gc.set_threshold(0)  # any int, as in CPython: 0 turns automatic collection off
        self.assertEqual(gc.get_threshold(), (0, 2, 1))
        # A C int, as CPython's set_threshold: OverflowError past it, TypeError for a float.
        for bad in (1 << 31, -(1 << 31) - 1, 1 << 40):
            with self.assertRaises(OverflowError):
                gc.set_threshold(bad)
        with self.assertRaises(TypeError):
            gc.set_threshold(1.5)
        gc.set_threshold(-5, (1 << 31) - 1, -(1 << 31))
        self.assertEqual(gc.get_threshold(), (-5, (1 << 31) - 1, -(1 << 31)))
        gc.set_debug(-1)  # any C int, as CPython's set_debug
        self.assertEqual(gc.get_debug(), -1)
        with self.assertRaises(OverflowError):
            gc.set_debug(1 << 31)
        gc.set_debug(0)
        del refs

    def test_get_stats(self):
        gc = self.s.gc
        stats = gc.get_stats()
        self.assertEqual(len(stats), 3)
        self.assertEqual(set(stats[0]), {"collections", "collected", "uncollectable"})
        a, b = self.make_cycle()
        del a, b
        gc.collect(1)
        after = gc.get_stats()
        self.assertEqual(after[1]["collections"], stats[1]["collections"] + 1)
        self.assertEqual(after[1]["collected"], stats[1]["collected"] + 2)

    def test_freeze(self):
        gc = self.s.gc
        refs = [self.s.alloc(slots=1) for _ in range(3)]
        self.assertEqual(gc.get_freeze_count(), 0)
        gc.freeze()
        self.assertEqual(gc.get_freeze_count(), 3)
        self.assertEqual(refs[0].info().generation, 3)
        self.assertEqual(gc.get_count(), (0, 0, 0))
        gc.unfreeze()
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertEqual(refs[0].info().generation, 2)

    def test_is_tracked(self):
        self.assertTrue(self.s.gc.is_tracked(self.s.alloc(slots=1)))
        self.assertFalse(self.s.gc.is_tracked(self.s.alloc(size=8)))

    def test_referrers_and_referents(self):
        s = self.s
        x = s.alloc(tag="x")
        y = s.alloc(tag="y")
        holder = s.alloc(slots=3, tag="holder")
        holder[0] = x
        holder[1] = y
        holder[2] = x
        other = s.alloc(slots=1, tag="other")
        other[0] = y
        # As gc.get_referents: every non-empty slot, in order, duplicates kept.
        self.assertEqual(s.gc.get_referents(holder), [x, y, x])
        self.assertEqual(s.gc.get_referents(holder, other), [x, y, x, y])
        self.assertEqual(s.gc.get_referrers(x), [holder])
        self.assertEqual(set(s.gc.get_referrers(y)), {holder, other})
        self.assertEqual(s.gc.get_referrers(holder), [])
        self.assertEqual(s.gc.get_referents(x), [])

    def test_get_objects_pages(self):
        s = self.s
        refs = [s.alloc(slots=1) for _ in range(130)]
        s.alloc(size=4)  # atomic: not tracked, freed at once anyway
        objs = s.gc.iter_objects(page_size=16)
        self.assertTrue(hasattr(objs, "__next__"))
        found = list(objs)
        self.assertEqual(set(found), set(refs))
        self.assertEqual(len(found), 130)
        # get_objects() is the stdlib's: a list.
        listed = s.gc.get_objects()
        self.assertIsInstance(listed, list)
        self.assertEqual(set(listed), set(refs))
        del listed
        self.assertEqual(len(s.gc.get_objects(generation=0)), 130)
        self.assertEqual(s.gc.get_objects(generation=2), [])
        del found
        s.gc.freeze()
        self.assertEqual(s.gc.get_objects(), [])
        s.gc.unfreeze()
        self.assertEqual(len(s.gc.get_objects(generation=2)), 130)
        self.assertEqual(len(list(s.gc.iter_objects(generation=2))), 130)
        with self.assertRaises(heapd.InvalidArgument):
            s.gc.get_objects(generation=3)

    def test_get_objects_abandoned(self):
        refs = [self.s.alloc(slots=1) for _ in range(40)]
        it = self.s.gc.iter_objects(page_size=8)
        first = next(it)
        it.close()  # releases the page's other Refs and the server's cursor
        del it, first
        self.assertEqual(self.s.getrefcount(refs[0]), 1)
        it = self.s.gc.iter_objects(page_size=8)
        next(it)
        del it  # abandoned without close
        self.assertEqual(self.s.getrefcount(refs[1]), 1)
        del refs
        self.assertEqual(self.objects(), 0)

    def test_mode(self):
        # heapd's own: the session's collector mode, generational (CPython's) by default.
        gc = self.s.gc
        self.assertEqual(gc.get_mode(), "generational")
        gc.set_mode("incremental", increment_objects=600)
        self.assertEqual(gc.get_mode(), "incremental")
        info = gc.get_mode_info()
        self.assertEqual((info["mode"], info["increment_objects"], info["phase"]),
                         ("incremental", 600, "idle"))
        with self.assertRaises(ValueError):
            gc.set_mode("concurrent")
        with self.assertRaises(ValueError):
            gc.set_mode("generational", increment_objects=0)
        self.assertEqual(gc.get_mode(), "incremental")
        a, b = self.make_cycle()
        del a, b
        self.assertEqual(gc.collect(), 2)  # collect() is whole in either mode
        gc.set_mode("generational")
        self.assertEqual(gc.get_mode_info()["increment_objects"], 600)

    def test_debug_and_garbage(self):
        gc = self.s.gc
        self.assertEqual(gc.get_debug(), 0)
        gc.set_debug(heapd.DEBUG_SAVEALL)
        self.assertEqual(gc.get_debug(), gc.DEBUG_SAVEALL)
        a, b = self.make_cycle()
        del a, b
        self.assertEqual(gc.collect(), 2)
        garbage = gc.garbage
        self.assertIsInstance(garbage, heapd.GarbageList)
        self.assertEqual(len(garbage), 2)
        self.assertEqual({r.info().tag for r in garbage}, {"Node"})
        self.assertEqual(garbage[0].info().tag, "Node")
        self.assertEqual(garbage[-1], garbage[1])
        self.assertEqual(len(garbage[:]), 2)
        with self.assertRaises(IndexError):
            garbage[2]
        with self.assertRaises(TypeError):
            del garbage[0]
        with self.assertRaises(TypeError):
            garbage[0] = None
        self.assertEqual(self.objects(), 2)
        gc.set_debug(0)
        gc.garbage.clear()
        self.assertEqual(gc.garbage, [])
        self.assertFalse(garbage)  # a live view: the same object sees the clear
        # As in CPython, the cycle itself is left for the next collection.
        self.assertEqual(self.objects(), 2)
        self.assertEqual(gc.collect(), 2)
        self.assertEqual(self.objects(), 0)

    def test_legacy_finalizer_is_uncollectable(self):
        gc = self.s.gc
        a, b = self.make_cycle(tag="Legacy", legacy_finalizer=True)
        del a, b
        gc.collect()
        self.assertEqual(gc.get_stats()[2]["uncollectable"], 2)
        self.assertEqual(len(gc.garbage), 2)
        gc.clear_garbage()
        gc.collect()
        self.assertEqual(self.objects(), 2)  # still a cycle of legacy finalizers
        gc.collect()

    def test_callbacks(self):
        calls = []
        gc = self.s.gc
        gc.callbacks.append(lambda phase, info: calls.append((phase, dict(info))))
        a, b = self.make_cycle()
        del a, b
        self.assertEqual(gc.collect(1), 2)
        # The callbacks ran during collect(), before it returned.
        self.assertEqual([c[0] for c in calls], ["start", "stop"])
        start, stop = calls[0][1], calls[1][1]
        # Exactly the stdlib's keys; "stop" adds the documented extra "duration".
        self.assertEqual(start, {"generation": 1, "collected": 0, "uncollectable": 0})
        self.assertEqual(stop, {"generation": 1, "collected": 2, "uncollectable": 0,
                                "duration": stop["duration"]})
        self.assertGreaterEqual(stop["duration"], 0.0)
        self.assertIsInstance(stop["duration"], float)
        gc.callbacks.clear()
        gc.collect()
        self.assertEqual(len(calls), 2)

    def test_callbacks_on_automatic_collection(self):
        gc = self.s.gc
        gens = []
        gc.callbacks.append(lambda phase, info: gens.append(info["generation"])
                            if phase == "stop" else None)
        gc.set_threshold(10)
        with self.s.scope():
            # Kept alive: the count is allocations minus deallocations, as in CPython.
            refs = [self.s.alloc(slots=1) for _ in range(25)]
        self.assertEqual(gens, [0, 0])
        self.assertEqual(len(refs), 25)

    def test_callback_error_is_printed(self):
        self.s.gc.callbacks.append(lambda phase, info: 1 / 0)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(self.s.gc.collect(), 0)
        self.assertIn("ZeroDivisionError", err.getvalue())
        self.assertIn("Exception ignored in heapd event callback", err.getvalue())

    def test_constants(self):
        self.assertEqual((heapd.DEBUG_STATS, heapd.DEBUG_COLLECTABLE, heapd.DEBUG_UNCOLLECTABLE,
                          heapd.DEBUG_SAVEALL, heapd.DEBUG_LEAK), (1, 2, 4, 32, 38))
        self.assertIsInstance(self.s.gc, heapd.GC)


# -----------------------------------------------------------------------------------------
# Weak references and finalizers.
# -----------------------------------------------------------------------------------------


class WeakrefTest(HeapdTestCase):
    def test_deref(self):
        a = self.s.alloc(data=b"obj")
        w = self.s.weakref(a)
        self.assertIsInstance(w, heapd.WeakRef)
        self.assertIsNone(w.callback)
        self.assertNotEqual(w.handle, a.handle)
        got = w()
        self.assertEqual(got, a)
        self.assertEqual(got.read(), b"obj")
        self.assertEqual(self.s.getrefcount(a), 2)
        del got
        del a
        self.assertIsNone(w())
        self.assertIn("dead", repr(w))
        w.close()
        w.close()
        with self.assertRaises(heapd.ReferenceReleased):
            w()

    def test_callback(self):
        cleared = []
        a = self.s.alloc(slots=1)
        w = self.s.weakref(a, callback=cleared.append)
        self.assertIsNotNone(w.callback)
        self.assertEqual(cleared, [])
        del a
        self.s.ping()
        self.assertEqual(cleared, [w])
        self.assertIsNone(w())

    def test_callback_in_collection(self):
        a = self.s.alloc(slots=1)
        b = self.s.alloc(slots=1)
        a[0], b[0] = b, a
        cleared = []
        w = self.s.weakref(a, lambda ref: cleared.append(ref))
        del a, b
        self.s.ping()
        self.assertEqual(cleared, [])
        self.s.gc.collect()
        self.assertEqual(cleared, [w])

    def test_no_callback_once_closed_or_freed(self):
        called = []
        a = self.s.alloc()
        w1 = self.s.weakref(a, callback=called.append)
        w2 = self.s.weakref(a, callback=called.append)
        w1.close()
        del w2
        del a
        self.s.ping()
        self.assertEqual(called, [])

    def test_context_manager_and_bad_callback(self):
        a = self.s.alloc()
        with self.s.weakref(a) as w:
            self.assertEqual(w(), a)
        with self.assertRaises(heapd.ReferenceReleased):
            w()
        with self.assertRaises(TypeError):
            self.s.weakref(a, callback=5)


class WeakrefModuleTest(HeapdTestCase):
    def test_module(self):
        s = self.s
        self.assertIsInstance(s.weakref, heapd.WeakrefModule)
        self.assertIs(s.weakref.ref, heapd.WeakRef)
        a = s.alloc()
        w = s.weakref.ref(a)
        self.assertIsInstance(w, heapd.WeakRef)
        self.assertEqual(heapd.WeakRef(a)(), a)  # made directly, as weakref.ref(a)
        with self.assertRaises(TypeError):
            heapd.WeakRef(5)
        with self.assertRaises(NotImplementedError):
            s.weakref.getweakrefcount(a)
        del a
        self.assertIsNone(w())

    def test_finalize(self):
        s = self.s
        seen = []
        a = s.alloc(tag="Thing")
        f = s.weakref.finalize(a, seen.append, "gone")
        self.assertIsInstance(f, heapd.Finalize)
        self.assertTrue(f.alive)
        self.assertRegex(repr(f), r"^<finalize object at 0x[0-9a-f]+; for 'Thing' at 0x[0-9a-f]+>$")
        peek = f.peek()
        self.assertEqual(peek[1:], (seen.append, ("gone",), {}))
        self.assertEqual(peek[0], a)
        del peek
        del a  # runs at the del: a death callback is waiting
        self.assertEqual(seen, ["gone"])
        self.assertFalse(f.alive)
        self.assertIsNone(f())
        self.assertIsNone(f.detach())
        self.assertIn("dead", repr(f))
        # A finalizer that raises is printed and ignored, as Python does.
        b = s.alloc()
        s.weakref.finalize(b, lambda: 1 / 0)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            del b
            s.flush()
        self.assertIn("ZeroDivisionError", err.getvalue())
        self.assertIn("Exception ignored in: <finalize object", err.getvalue())
        # In a collection too, with the object's cycle.
        c = s.alloc(slots=1)
        c[0] = c
        s.weakref.finalize(c, seen.append, "collected")
        del c
        self.assertEqual(seen, ["gone"])
        s.gc.collect()
        self.assertEqual(seen, ["gone", "collected"])
        self.assertEqual(self.objects(), 0)

    def test_weak_value_dictionary(self):
        s = self.s
        d = s.weakref.WeakValueDictionary()
        self.assertIsInstance(d, heapd.WeakValueDictionary)
        a, b = s.alloc(tag="a"), s.alloc(tag="b")
        d["a"] = a
        d["b"] = b
        self.assertEqual(len(d), 2)
        self.assertEqual(d["a"], a)
        self.assertIn("b", d)
        self.assertEqual(sorted(d), ["a", "b"])
        del b
        s.flush()
        self.assertNotIn("b", d)
        self.assertEqual(list(d), ["a"])
        self.assertIsNone(d.get("b"))
        d["a"] = s.alloc(tag="a2")  # replaced: the new object is not kept alive either
        self.assertNotIn("a", d)
        self.assertEqual(len(d), 0)  # its death removed the entry, as in CPython
        d["c"] = a
        del d["c"]
        self.assertEqual(len(d), 0)
        with self.assertRaises(KeyError):
            del d["c"]
        del a


class FinalizerTest(HeapdTestCase):
    def test_on_finalize(self):
        seen = []
        self.s.on_finalize = seen.append
        a = self.s.alloc(tag="Res", finalizer=True)
        handle = a.handle
        self.s.alloc(tag="Plain")  # no finalizer: no event
        del a
        self.s.ping()
        self.assertEqual(seen, [heapd.Finalized(handle, "Res")])
        self.assertEqual(seen[0].tag, "Res")

    def test_per_object_finalizer(self):
        mine, everyone = [], []
        a = self.s.alloc(tag="Mine", finalizer=mine.append)
        b = self.s.alloc(tag="Other", finalizer=True)
        self.s.on_finalize = everyone.append
        a.release()  # release() waits for its own events
        self.assertEqual([ev.tag for ev in mine], ["Mine"])
        b.release()
        self.assertEqual([ev.tag for ev in everyone], ["Mine", "Other"])
        self.assertEqual(len(mine), 1)

    def test_finalizer_in_cascade_and_collection(self):
        seen = []
        self.s.on_finalize = lambda ev: seen.append(ev.tag)
        parent = self.s.alloc(slots=1, tag="parent", finalizer=True)
        with self.s.alloc(tag="child", finalizer=True) as child:
            parent[0] = child
        parent.release()
        self.assertEqual(sorted(seen), ["child", "parent"])
        seen.clear()
        a = self.s.alloc(slots=1, tag="cyc", finalizer=True)
        a[0] = a
        del a
        self.s.gc.collect()
        self.assertEqual(seen, ["cyc"])

    def test_callback_may_call_the_session(self):
        stats = []
        self.s.on_finalize = lambda ev: stats.append(self.s.stats()["objects"])
        keep = self.s.alloc()
        self.s.alloc(finalizer=True).release()
        self.assertEqual(stats, [1])
        del keep

    def test_finalizer_error_is_printed(self):
        self.s.on_finalize = lambda ev: {}["missing"]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.s.alloc(finalizer=True).release()
        self.assertIn("KeyError", err.getvalue())


# -----------------------------------------------------------------------------------------
# The tracemalloc mirror.
# -----------------------------------------------------------------------------------------


class TracemallocTest(HeapdTestCase):
    def test_start_stop(self):
        tm = self.s.tracemalloc
        self.assertIsInstance(tm, heapd.Tracemalloc)
        self.assertFalse(tm.is_tracing())
        with self.assertRaises(heapd.NotTracing):
            tm.take_snapshot()
        with self.assertRaises(RuntimeError):
            tm.take_snapshot()
        tm.start()
        self.assertTrue(tm.is_tracing())
        tm.stop()
        self.assertFalse(tm.is_tracing())

    def test_traced_memory(self):
        tm = self.s.tracemalloc
        tm.start()
        self.assertEqual(tm.get_traced_memory(), (0, 0))
        a = self.s.alloc(size=1000)
        current, peak = tm.get_traced_memory()
        self.assertGreaterEqual(current, 1000)
        self.assertEqual(peak, current)
        del a
        current2, peak2 = tm.get_traced_memory()
        self.assertEqual((current2, peak2), (0, peak))
        tm.reset_peak()
        self.assertEqual(tm.get_traced_memory(), (0, 0))
        b = self.s.alloc(size=100)
        tm.clear_traces()
        self.assertEqual(tm.get_traced_memory()[0], 0)
        self.assertTrue(tm.is_tracing())
        del b
        tm.stop()

    def test_snapshots(self):
        s = self.s
        tm = s.tracemalloc
        tm.start()
        keep = [s.alloc(size=64, tag="Small", site="app.py:1") for _ in range(3)]
        old = tm.take_snapshot()
        self.assertIsInstance(old, heapd.Snapshot)
        self.assertIsInstance(old, tracemalloc.Snapshot)
        keep += [s.alloc(size=1000, tag="Big", site="app.py:2") for _ in range(2)]
        keep.append(s.alloc(size=8))  # site defaults to this line
        line = sys._getframe().f_lineno - 1
        new = tm.take_snapshot()
        self.assertEqual(len(new.traces), 6)
        self.assertEqual(new.traceback_limit, 1)
        big = [t for t in new.traces if str(t.traceback) == "app.py:2"]
        self.assertEqual(len(big), 2)
        self.assertIsInstance(big[0], tracemalloc.Trace)
        self.assertEqual(big[0].domain, 0)
        self.assertEqual(big[0].size, s.getsizeof(keep[3]))
        self.assertEqual(sum(t.size for t in new.traces), tm.get_traced_memory()[0])

        by_line = new.statistics("lineno")
        self.assertIsInstance(by_line[0], tracemalloc.Statistic)
        self.assertEqual([str(st.traceback) for st in by_line[:2]], ["app.py:2", "app.py:1"])
        self.assertEqual(by_line[0].count, 2)
        self.assertGreaterEqual(by_line[0].size, 2000)
        self.assertIn(f"{__file__}:{line}", [str(st.traceback) for st in by_line])
        self.assertIn("app.py:2: size=", str(by_line[0]))
        self.assertIn("count=2", str(by_line[0]))
        self.assertEqual(new.statistics("traceback"), by_line)  # one frame per traceback
        self.assertEqual(new.statistics("site"), by_line)
        self.assertEqual([str(st.traceback) for st in new.statistics("filename")[:2]],
                         ["app.py:0", f"{__file__}:0"])
        by_tag = new.statistics("tag")
        self.assertEqual([st.tag for st in by_tag][:2], ["Big", "Small"])
        self.assertIsInstance(by_tag[0], heapd.TagStatistic)
        self.assertRegex(str(by_tag[0]), r"^Big: size=\d+ B, count=2, average=\d+ B$")

        diff = new.compare_to(old, "lineno")
        self.assertIsInstance(diff[0], tracemalloc.StatisticDiff)
        self.assertEqual(str(diff[0].traceback), "app.py:2")
        self.assertEqual((diff[0].count, diff[0].count_diff), (2, 2))
        self.assertEqual(diff[0].size, diff[0].size_diff)
        self.assertIn("(+2)", str(diff[0]))
        tag_diff = {d.tag: d for d in new.compare_to(old, "tag")}
        self.assertEqual(tag_diff["Big"].count_diff, 2)
        self.assertEqual(tag_diff["Small"].count_diff, 0)
        with self.assertRaises(ValueError):
            new.statistics("nonsense")
        with self.assertRaises(ValueError):
            new.statistics("tag", cumulative=True)

        # filter_traces with the stdlib's filters keeps the tags with their traces.
        only = new.filter_traces([tracemalloc.Filter(True, "app.py")])
        self.assertIsInstance(only, heapd.Snapshot)
        self.assertEqual(len(only.traces), 5)
        self.assertEqual(sorted(only.tags), ["Big", "Big", "Small", "Small", "Small"])
        self.assertEqual(len(new.filter_traces([tracemalloc.Filter(False, "app.py")]).traces), 1)
        self.assertEqual(len(new.filter_traces([tracemalloc.DomainFilter(True, 0)]).traces), 6)
        self.assertEqual(len(new.filter_traces([]).traces), 6)

        # dump() and load(), the stdlib's, round-trip it.
        path = os.path.join(self.tmpdir(), "snap.pickle")
        new.dump(path)
        loaded = heapd.Snapshot.load(path)
        self.assertIsInstance(loaded, heapd.Snapshot)
        self.assertEqual(loaded.traces, new.traces)
        self.assertEqual(loaded.tags, new.tags)
        self.assertEqual(loaded.statistics("lineno"), by_line)
        self.assertEqual(tracemalloc.Snapshot.load(path).statistics("tag"), by_tag)
        del keep
        tm.stop()

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="heapd-py-test-")
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def test_snapshot_is_freed_on_the_server(self):
        tm = self.s.tracemalloc
        tm.start()
        self.assertGreater(tm.get_tracemalloc_memory(), 0)
        refs = [self.s.alloc(size=i, tag=f"T{i}") for i in range(50)]
        mem = tm.get_tracemalloc_memory()
        snap = tm.take_snapshot()
        self.assertEqual(len(snap.traces), 50)
        # Its traces are here: the server's copy was freed as it was read (what stays is the
        # snapshot list's room, a few dozen bytes).
        self.assertLess(tm.get_tracemalloc_memory(), mem + 512)
        self.assertEqual(len(snap.statistics("tag")), 50)
        del refs
        tm.stop()

    def test_many_traces_page(self):
        s = self.s
        tm = s.tracemalloc
        tm.start()
        # More entries than one 64 KiB response holds: read in pages.
        refs = s.alloc_many(0)
        with s.pipeline() as p:
            for i in range(3000):
                p.alloc(size=i % 500, site=f"gen{i}.py:{i}", tag="G")
        refs = p.results
        snap = tm.take_snapshot()
        self.assertEqual(len(snap.traces), 3000)
        self.assertEqual(len(snap.statistics("traceback")), 3000)
        s.release_many(refs)
        tm.stop()

    def test_traceback_of_nframe(self):
        s = self.s
        tm = s.tracemalloc
        self.assertEqual(tm.get_traceback_limit(), 1)

        def inner():
            return s.alloc(size=10, tag="deep")

        def outer():
            return inner()

        tm.start(3)
        self.assertEqual(tm.get_traceback_limit(), 3)
        first = sys._getframe().f_lineno + 1
        a = outer()
        tb = tm.get_object_traceback(a)
        self.assertIsInstance(tb, tracemalloc.Traceback)
        self.assertEqual(len(tb), 3)
        # Oldest to most recent, as the stdlib's Traceback sorts them.
        self.assertEqual([f.lineno for f in tb], [first, first - 5, first - 8])
        self.assertEqual({f.filename for f in tb}, {__file__})
        self.assertEqual(tb.format()[-1].strip(), 'return s.alloc(size=10, tag="deep")')
        snap = tm.take_snapshot()
        self.assertEqual(snap.traceback_limit, 3)
        stat = snap.statistics("traceback")[0]
        self.assertEqual(stat.traceback, tb)
        self.assertEqual(len(snap.statistics("lineno", cumulative=True)), 3)
        # The same line called from elsewhere is another traceback, the same 'lineno'.
        b = inner()
        snap = tm.take_snapshot()
        self.assertEqual(len(snap.statistics("traceback")), 2)
        self.assertEqual(len(snap.statistics("lineno")), 1)
        # Objects allocated before tracing have no traceback.
        tm.stop()
        self.assertIsNone(tm.get_object_traceback(a))
        self.assertEqual(tm.get_traceback_limit(), 1)
        c = s.alloc()
        self.assertIsNone(tm.get_object_traceback(c))
        tm.start(200)  # a deep stack is cut to what the server takes
        d = s.alloc()
        self.assertLessEqual(len(tm.get_object_traceback(d)), 200)
        with self.assertRaises(ValueError):
            tm.start(0)
        with self.assertRaises(TypeError):
            tm.start(1.5)
        tm.stop()
        del a, b, c, d

    def test_object_traceback_in_a_pipeline(self):
        s = self.s
        s.tracemalloc.start()
        a = s.alloc(site="x.py:3")
        with s.pipeline() as p:
            p.tracemalloc.get_object_traceback(a).tracemalloc.get_tracemalloc_memory()
        self.assertEqual(str(p.results[0]), "x.py:3")
        self.assertGreater(p.results[1], 0)
        s.tracemalloc.stop()
        del a


# -----------------------------------------------------------------------------------------
# Admin requests.
# -----------------------------------------------------------------------------------------


class AdminTest(HeapdTestCase):
    def test_admin_requests(self):
        admin = self.connect(token=ADMIN_TOKEN)
        self.assertTrue(admin.admin)
        stats = admin.server_stats()
        self.assertGreaterEqual(stats["sessions"], 2)
        self.assertIn("uptime_ms", stats)
        ids = [info["id"] for info in admin.list_sessions()]
        self.assertIn(self.s.session_id, ids)
        admin.kill_session(self.s.session_id)
        with self.assertRaises(heapd.NoSuchSession):
            self.s.poll(timeout=10)  # the server's last word: id 0, ENOSESSION
        self.assertFalse(self.s.connected)
        with self.assertRaises(heapd.NoSuchSession):
            self.s.reconnect()
        with self.assertRaises(heapd.NoSuchSession):
            admin.kill_session(self.s.session_id)

    def test_not_admin(self):
        for call in (self.s.server_stats, self.s.list_sessions,
                     lambda: self.s.kill_session("0" * 16)):
            with self.assertRaises(heapd.PermissionDenied):
                call()


if __name__ == "__main__":
    unittest.main()
