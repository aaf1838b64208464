#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Tests of heapd.asyncio against a real heapd (and against fake servers that break the
protocol): the blocking session's methods as coroutines, many tasks on one session and on
many sessions at once, pipelines, events delivered on the loop, cancellation, strictness.

Run (ctest does, through heapd_daemon_test): HEAPD_BIN=<build>/bin/heapd
    PYTHONPATH=tests/server:<build>/clients/python /usr/bin/python3 test_python_asyncio.py
"""

import asyncio
import inspect
import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import heapd  # noqa: E402
import heapd.asyncio  # noqa: E402
from heapd._ops import pb  # noqa: E402
from test_python_client import USER_TOKEN, Daemon  # noqa: E402
from test_python_strict import FakeServer, frame, response  # noqa: E402

DAEMON = None


def setUpModule():
    global DAEMON
    DAEMON = Daemon().start()


def tearDownModule():
    if DAEMON is not None:
        DAEMON.stop(show_log=AsyncTestCase.failed)


class AsyncTestCase(unittest.IsolatedAsyncioTestCase):
    failed = False

    async def connect(self, **kw):
        kw.setdefault("token", USER_TOKEN)
        kw.setdefault("timeout", 30)
        s = await heapd.asyncio.connect(kw.pop("url", DAEMON.url), **kw)
        self.addAsyncCleanup(s.close)
        return s

    async def asyncSetUp(self):
        # The tests run in asyncio's debug mode; the machine is shared, so a slow step is
        # not worth a warning.
        asyncio.get_running_loop().slow_callback_duration = 10
        self.s = await self.connect()

    def tearDown(self):
        outcome = getattr(self, "_outcome", None)
        if outcome is not None and not getattr(outcome, "success", True):
            AsyncTestCase.failed = True

    async def objects(self, s=None):
        return (await (s or self.s).stats())["objects"]


class SessionTest(AsyncTestCase):
    async def test_methods_are_coroutines_with_the_same_names(self):
        s = self.s
        for name in ("ping", "alloc", "alloc_many", "release_many", "getrefcount", "getsizeof",
                     "stats", "charges", "flush", "close", "detach", "reconnect", "poll",
                     "share", "release", "get_slot", "set_slot", "read", "write", "info"):
            self.assertTrue(inspect.iscoroutinefunction(getattr(s, name)), name)
            self.assertTrue(hasattr(heapd.Session, name), name)
        for name in ("collect", "get_count", "get_objects", "get_referrers", "freeze"):
            self.assertTrue(inspect.iscoroutinefunction(getattr(s.gc, name)), name)
        for name in ("start", "stop", "take_snapshot", "get_traced_memory",
                     "get_object_traceback", "get_tracemalloc_memory"):
            self.assertTrue(inspect.iscoroutinefunction(getattr(s.tracemalloc, name)), name)
        for name in ("ref", "finalize", "__call__"):
            self.assertTrue(inspect.iscoroutinefunction(getattr(s.weakref, name)), name)
        self.assertRegex(s.session_id, r"^[0-9a-f]{16}$")
        self.assertTrue(s.connected)
        self.assertGreater(await s.ping(), 0)

    async def test_connect_forms(self):
        async with heapd.asyncio.connect(DAEMON.tcp_url, token=USER_TOKEN) as s:
            self.assertGreater(await s.ping(), 0)
        self.assertTrue(s.closed)
        s = await heapd.asyncio.connect(f"127.0.0.1:{DAEMON.tcp_port}", token=USER_TOKEN)
        self.assertGreater(await s.ping(), 0)
        await s.close()
        await s.close()  # twice is fine
        with self.assertRaises(heapd.ConnectionClosed):
            await s.ping()
        with self.assertRaises(heapd.AuthenticationFailed):
            await heapd.asyncio.connect(DAEMON.url, token="wrong")
        with self.assertRaises(heapd.ConnectionClosed):
            await heapd.asyncio.connect("unix:/nonexistent/heapd.sock", connect_timeout=1)

    async def test_refs(self):
        s = self.s
        a = await s.alloc(size=8, slots=2, tag="Node", data=b"abc")
        self.assertIsInstance(a, heapd.AsyncRef)
        self.assertIsInstance(a, heapd.Ref)
        b = await a.share()
        self.assertEqual(await s.getrefcount(a), 2)
        await a.set_slot(0, b)
        child = await a.get_slot(0)
        self.assertEqual(child, a)
        self.assertIsNone(await a.get_slot(1))
        with self.assertRaises(heapd.OutOfRange):
            await a.get_slot(2)
        self.assertEqual(await a.read(), b"abc" + bytes(5))
        await a.write(3, b"de")
        self.assertEqual(await a.read(0, 5), b"abcde")
        info = await a.info()
        self.assertEqual((info.tag, info.slots, info.refcount), ("Node", 2, 4))
        self.assertEqual(await s.getsizeof(a), info.sizeof)
        for bad in (lambda: a[0], lambda: a.__setitem__(0, b), lambda: iter(a)):
            with self.assertRaises(TypeError):
                bad()
        with self.assertRaises(TypeError):
            with a:
                pass
        await a.set_slot(0, None)
        del child
        await b.release()
        with self.assertRaises(heapd.ReferenceReleased):
            await b.release()
        async with a:
            pass
        self.assertTrue(a.released)
        self.assertEqual(await self.objects(), 0)

    async def test_del_releases_with_the_next_call(self):
        a = await self.s.alloc()
        del a
        self.assertEqual(await self.objects(), 0)

    async def test_detach_and_resume(self):
        s = await heapd.asyncio.connect(DAEMON.url, token=USER_TOKEN)
        a = await s.alloc(data=b"kept")
        handle = a.forget()
        sid, tok = await s.detach()
        self.assertFalse(s.connected)
        with self.assertRaises(heapd.ConnectionClosed):
            await s.ping()
        await s.reconnect()
        self.assertTrue(s.resumed)
        kept = s.adopt(handle)
        self.assertEqual(await kept.read(), b"kept")
        kept.forget()
        sid, tok = await s.detach()
        t = await heapd.asyncio.connect(DAEMON.url, token=USER_TOKEN, resume=(sid, tok))
        self.assertTrue(t.resumed)
        self.assertEqual(await self.objects(t), 1)
        await t.close()


class ConcurrencyTest(AsyncTestCase):
    async def test_many_tasks_on_one_session(self):
        s = self.s

        async def work(i):
            refs = []
            for j in range(10):
                r = await s.alloc(size=8, data=bytes([i, j]) * 4, tag=f"t{i}")
                refs.append(r)
                self.assertEqual(await r.read(), bytes([i, j]) * 4)
                self.assertEqual((await r.info()).tag, f"t{i}")
            async with s.pipeline() as p:
                for r in refs:
                    p.getrefcount(r)
            self.assertEqual(p.results, [1] * 10)
            await s.release_many(refs)
            return i

        self.assertEqual(await asyncio.gather(*(work(i) for i in range(60))),
                         list(range(60)))
        self.assertEqual(await self.objects(), 0)

    async def test_many_sessions_at_once(self):
        sessions = await asyncio.gather(*(self.connect() for _ in range(20)))
        self.assertEqual(len({s.session_id for s in sessions}), 20)

        async def work(s, i):
            async def task(k):
                r = await s.alloc(size=4, data=bytes([i, k, i, k]))
                self.assertEqual(await r.read(), bytes([i, k, i, k]))
                await r.release()
            await asyncio.gather(*(task(k) for k in range(10)))
            return await self.objects(s)

        self.assertEqual(await asyncio.gather(*(work(s, i) for i, s in enumerate(sessions))),
                         [0] * 20)

    async def test_scopes_are_per_task(self):
        s = self.s
        outside = await s.alloc()

        async def scoped():
            async with s.scope():
                await s.alloc()
                await s.alloc()
                await asyncio.sleep(0)
            return await self.objects()

        async def unscoped():
            await asyncio.sleep(0)
            return await s.alloc()

        kept, counted = await asyncio.gather(unscoped(), scoped())
        self.assertFalse(kept.released)  # taken in another task: not the scope's
        await s.flush()
        self.assertEqual(await self.objects(), 2)
        await s.release_many([kept, outside])

    async def test_cancelled_call_gives_back_its_references(self):
        s = self.s

        async def many():
            return await s.alloc_many(2000, size=8)

        task = asyncio.ensure_future(many())
        await asyncio.sleep(0)  # the requests are written
        task.cancel()
        with self.assertRaises(asyncio.CancelledError):
            await task
        await s.flush()
        await s.flush()
        self.assertEqual(await self.objects(), 0)
        self.assertTrue(s.connected)


class PipelineTest(AsyncTestCase):
    async def test_pipeline(self):
        s = self.s
        holder = await s.alloc(slots=1)
        async with s.pipeline() as p:
            self.assertIs(p.alloc(tag="p"), p)
            p.ping().getrefcount(holder).gc.collect()
        self.assertIsInstance(p.results[0], heapd.AsyncRef)
        self.assertEqual(p.results[2], 1)
        p = s.pipeline(raise_on_error=False)
        p.alloc(slots=70000).ping()
        results = await p.execute()
        self.assertIsInstance(results[0], heapd.InvalidArgument)
        with self.assertRaises(heapd.InvalidArgument):
            async with s.pipeline() as p:
                p.alloc(slots=70000)
        with self.assertRaises(TypeError):
            with s.pipeline():
                pass
        with self.assertRaises(ZeroDivisionError):
            async with s.pipeline() as p:
                p.release(holder)
                1 / 0
        self.assertTrue(holder.released)
        self.assertEqual(await self.objects(), 1)  # the pipeline's first alloc

    async def test_alloc_many_release_many(self):
        s = self.s
        refs = await s.alloc_many(500, size=8, tag="M")
        self.assertEqual(len({r.handle for r in refs}), 500)
        self.assertEqual(await self.objects(), 500)
        await s.release_many(refs)
        self.assertEqual(await self.objects(), 0)


class GcAndEventsTest(AsyncTestCase):
    async def test_gc(self):
        s = self.s
        a, b = await s.alloc(slots=1, tag="Node"), await s.alloc(slots=1, tag="Node")
        await a.set_slot(0, b)
        await b.set_slot(0, a)
        objs = await s.gc.get_objects()
        self.assertIsInstance(objs, list)
        self.assertEqual(set(objs), {a, b})
        seen = [r async for r in s.gc.iter_objects(page_size=1)]
        self.assertEqual(set(seen), {a, b})
        del objs, seen
        self.assertEqual(await s.gc.get_count(), (await s.gc.get_count()))
        await s.gc.set_debug(heapd.DEBUG_SAVEALL)
        del a, b
        self.assertEqual(await s.gc.collect(), 2)
        garbage = s.gc.garbage
        self.assertEqual(await garbage.count(), 2)
        self.assertEqual(len(await garbage.list()), 2)
        self.assertEqual(len([r async for r in garbage]), 2)
        with self.assertRaises(TypeError):
            len(garbage)
        await garbage.clear()
        await s.gc.set_debug(0)
        self.assertEqual(await garbage.count(), 0)
        await s.gc.collect()
        self.assertEqual(await self.objects(), 0)

    async def test_callbacks_run_on_the_loop(self):
        s = self.s
        loop = asyncio.get_running_loop()
        calls = []

        def on_gc(phase, info):
            calls.append((phase, threading.current_thread() is threading.main_thread(),
                          asyncio.get_running_loop() is loop))
        s.gc.callbacks.append(on_gc)
        a = await s.alloc(slots=1)
        await a.set_slot(0, a)
        del a
        self.assertEqual(await s.gc.collect(), 1)
        # collect() returned after its own events' callbacks ran.
        self.assertEqual(calls, [("start", True, True), ("stop", True, True)])
        s.gc.callbacks.clear()

    async def test_finalizers_and_coroutine_callbacks(self):
        s = self.s
        seen = []
        done = asyncio.Event()

        async def later(info):
            await asyncio.sleep(0)
            seen.append(("task", info.tag))
            done.set()
        s.on_finalize = lambda info: seen.append(("sync", info.tag))
        a = await s.alloc(finalizer=later, tag="gone")
        await a.release()
        await asyncio.wait_for(done.wait(), 10)
        self.assertEqual(seen, [("sync", "gone"), ("task", "gone")])

    async def test_del_with_a_death_callback_flushes_soon(self):
        s = self.s
        seen = []
        s.on_finalize = seen.append
        a = await s.alloc(finalizer=True, tag="soon")
        del a
        # No call is made here: the session flushes on its own, from the loop.
        for _ in range(100):
            if seen:
                break
            await s.poll(0.05)
        self.assertEqual([ev.tag for ev in seen], ["soon"])

    async def test_weakref(self):
        s = self.s
        called = []
        a = await s.alloc(tag="w")
        w = await s.weakref(a, called.append)
        self.assertEqual(await w(), a)
        await a.release()
        self.assertEqual(called, [w])
        self.assertIsNone(await w())
        await w.close()
        with self.assertRaises(heapd.ReferenceReleased):
            await w()

    async def test_weakref_module(self):
        s = self.s
        seen = []
        a = await s.alloc(tag="Kenny")
        f = await s.weakref.finalize(a, seen.append, "killed")
        self.assertIn("for 'Kenny'", repr(f))
        self.assertTrue(f.alive)
        w = await s.weakref.ref(a)
        self.assertEqual(await w(), a)
        await a.release()
        self.assertEqual(seen, ["killed"])
        self.assertFalse(f.alive)
        b = await s.alloc()
        g = await s.weakref.finalize(b, seen.append, "detached")
        obj, func, args, kwargs = await g.detach()
        self.assertEqual((obj, func, args, kwargs), (b, seen.append, ("detached",), {}))
        with self.assertRaises(TypeError):
            s.weakref.WeakValueDictionary()
        with self.assertRaises(TypeError):
            heapd.WeakRef(b)  # a direct WeakRef needs a blocking session
        del obj

    async def test_tracemalloc(self):
        s = self.s
        tm = s.tracemalloc
        await tm.start()
        self.assertTrue(await tm.is_tracing())
        refs = [await s.alloc(size=100, tag="T") for _ in range(3)]
        current, peak = await tm.get_traced_memory()
        self.assertGreater(current, 300)
        snap = await tm.take_snapshot()
        self.assertIsInstance(snap, heapd.Snapshot)  # the client's: its methods need no await
        stats = snap.statistics("tag")
        self.assertEqual(stats[0].count, 3)
        self.assertEqual(str(await tm.get_object_traceback(refs[0])),
                         str(snap.statistics("lineno")[0].traceback))
        self.assertGreater(await tm.get_tracemalloc_memory(), 0)
        await tm.stop()
        await s.release_many(refs)


class StrictTest(unittest.IsolatedAsyncioTestCase):
    def serve(self, script):
        server = FakeServer(script)
        self.addCleanup(server.close)
        return server

    async def test_echo_server(self):
        def echo(conn):
            while True:
                data = conn.sock.recv(65536)
                if not data:
                    return
                conn.sock.sendall(data)
        with self.assertRaises(heapd.BadReply):
            await heapd.asyncio.connect(self.serve(echo).url, timeout=5)

    async def test_close_mid_frame(self):
        def script(conn):
            conn.hello()
            req = conn.read_request()
            conn.send(response(req.id, ping=pb.PingResult(server_time_unix_ns=5))[:-2])
        s = await heapd.asyncio.connect(self.serve(script).url, timeout=5)
        with self.assertRaises(ConnectionError) as cm:
            await s.ping()
        self.assertIn("middle of a frame", str(cm.exception))
        self.assertFalse(s.connected)

    async def test_wrong_answer_fails_every_waiting_call(self):
        def script(conn):
            conn.hello()
            first = conn.read_request()
            conn.send(frame(pb.ServerFrame(response=pb.Response(
                id=first.id, status=pb.Status(name="OK"), alloc=pb.HandleResult(handle=1)))))
            conn.sock.recv(1)
        s = await heapd.asyncio.connect(self.serve(script).url, timeout=5)
        results = await asyncio.gather(s.ping(), s.ping(), return_exceptions=True)
        self.assertIsInstance(results[0], heapd.BadReply)
        self.assertIsInstance(results[1], heapd.BadReply)
        self.assertFalse(s.connected)

    async def test_timeout(self):
        def script(conn):
            conn.hello()
            conn.read_request()
            conn.sock.recv(1)
        s = await heapd.asyncio.connect(self.serve(script).url, timeout=0.3)
        with self.assertRaises(heapd.ConnectionClosed) as cm:
            await s.ping()
        self.assertIn("timed out", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
