# SPDX-License-Identifier: MIT
"""test_python_resume.py: the Python client resumes through restarts and cut links
(``connect(resume_timeout=...)``), and nothing runs twice.

The Python twin of test_resume.py: a seeded sequence of mixed mutating requests (alloc with
payload and tag, set_slot, share, release, write, gc.collect(0)) goes out in pipelines of
CHUNK through a Session with resume_timeout. The reference run has nothing happen to it.
Then the same sequence while the daemon gets SIGTERM twice, from another thread while a
pipeline is in flight, and is started again (its sessions saved and restored); and through a
proxy that cuts the TCP link at random points (test_resume.Proxy). Every call must succeed
and the final heap, dumped in run-independent terms (objects by the order of the alloc that
made them, never by handle), must equal the reference: a request run twice or lost shows.
A third run cuts after random amounts of the server's responses, so that re-sent requests
that already ran must be answered from the replay window.
heapd.asyncio's Session does the same (adrive). A session without resume_timeout still
raises ConnectionClosed, and a detached one is not resumed behind the caller's back.
"""

import asyncio
import random
import threading
import unittest

import harness
from harness import Daemon
from test_resume import Proxy, assert_resumed_through, cutting_proxy

import heapd
import heapd.asyncio

NOPS = 20000
CHUNK = 500
SEED = 20261202
TAGS = [None, "Node", "Leaf", "Edge"]


class Workload:
    """The seeded sequence, written once for both clients and no I/O: queue() fills a
    pipeline with the next CHUNK requests, absorb() takes their results, and dump() is a
    generator that yields each call of the final dump as (name, *args), is sent its result,
    and returns the heap in run-independent terms (objects by creation order)."""

    def __init__(self):
        self.rnd = random.Random(SEED)
        self.held = []  # per object (by creation order): the Refs this driver holds
        self.shape = []  # per object: (slots, size)
        self.done = 0

    def more(self):
        return self.done < NOPS

    def pick(self, limit):
        for _ in range(16):
            if limit:
                i = self.rnd.randrange(limit)
                if self.held[i]:
                    return i
        return None

    def queue(self, p):
        rnd, held, shape = self.rnd, self.held, self.shape
        limit = len(held)
        n = min(CHUNK, NOPS - self.done)
        meaning = []
        for _ in range(n):
            op = rnd.randrange(100)
            a, b = self.pick(limit), self.pick(limit)
            if op < 30 or a is None:
                size, slots = rnd.randrange(48), rnd.randrange(4)
                data = bytes([rnd.randrange(256)]) * min(size, 16)
                p.alloc(size=size, slots=slots, tag=TAGS[rnd.randrange(4)], data=data or None)
                meaning.append(("alloc", slots, size))
            elif op < 50 and shape[a][0] and b is not None:
                p.set_slot(held[a][0], rnd.randrange(shape[a][0]), held[b][0])
                meaning.append(None)
            elif op < 62:
                p.share(held[a][0])
                meaning.append(("share", a))
            elif op < 80:
                p.release(held[a].pop())
                meaning.append(None)
            elif op < 95 and shape[a][1]:
                off = rnd.randrange(shape[a][1])
                p.write(held[a][0], off, bytes([rnd.randrange(256)]) * (shape[a][1] - off))
                meaning.append(None)
            else:
                p.gc.collect(0)
                meaning.append(None)
        self.done += n
        return meaning

    def absorb(self, meaning, results):
        for m, r in zip(meaning, results):
            if m and m[0] == "alloc":
                self.held.append([r])
                self.shape.append(m[1:])
            elif m:
                self.held[m[1]].append(r)

    def dump(self):
        index = {refs[0].handle: i for i, refs in enumerate(self.held) if refs}
        out = []
        for i, refs in enumerate(self.held):
            if not refs:
                continue
            info = yield ("info", refs[0])
            slots = []
            for k in range(info.slots):
                r = yield ("get_slot", refs[0], k)
                slots.append(None if r is None else index.get(r.handle, "other"))
                if r is not None:
                    yield ("release", r)
            data = (yield ("read", refs[0])) if info.size else b""
            out.append((i, info.refcount, info.client_refs, info.size, info.tag,
                        info.generation, tuple(slots), data))
        st = yield ("stats",)
        out.append(("stats", st["objects"], st["object_bytes"], st["containers"]))
        count, stats = (yield ("gc.get_count",)), (yield ("gc.get_stats",))
        out.append(("gc", tuple(count), repr(stats)))
        return out


def method(s, call):
    """The bound method a dump() call names ("release" is the Ref's own)."""
    name, *args = call
    if name == "release":
        return args[0].release, ()
    obj = s
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj, args


def drive(url, on_chunk=None, **kw):
    """Runs the Workload on a blocking Session; on_chunk(n) after the n-th pipeline.
    Returns (dump, resumes)."""
    w = Workload()
    s = heapd.connect(url, timeout=60, client_name="py-resume", **kw)
    chunk = 0
    while w.more():
        with s.pipeline() as p:
            meaning = w.queue(p)
        w.absorb(meaning, p.results)
        chunk += 1
        if on_chunk:
            on_chunk(chunk)
    steps, result = w.dump(), None
    try:
        while True:
            fn, args = method(s, steps.send(result))
            result = fn(*args)
    except StopIteration as done:
        out = done.value
    resumes = s.resumes
    s.close()
    return out, resumes


async def adrive(url, on_chunk=None, **kw):
    """drive() on heapd.asyncio: the same Workload, so the same final heap."""
    w = Workload()
    s = await heapd.asyncio.connect(url, timeout=60, client_name="py-resume", **kw)
    chunk = 0
    while w.more():
        async with s.pipeline() as p:
            meaning = w.queue(p)
        w.absorb(meaning, p.results)
        chunk += 1
        if on_chunk:
            on_chunk(chunk)
    steps, result = w.dump(), None
    try:
        while True:
            fn, args = method(s, steps.send(result))
            result = await fn(*args)
    except StopIteration as done:
        out = done.value
    resumes = s.resumes
    await s.close()
    return out, resumes


def restart_in_background(d, threads, failures):
    """Restarts d (SIGTERM, exit 0, start) from another thread, while the caller's next
    pipeline is in flight; an error goes to failures for the test's own thread."""
    def restart():
        try:
            d.restart()
        except BaseException as exc:  # noqa: B902 - reported by the test's thread
            failures.append(exc)
    t = threading.Thread(target=restart)
    t.start()
    threads.append(t)


class PythonResumeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with Daemon({"log_level": "info"}) as d:
            cls.reference, resumes = drive("unix:" + d.sock_path, resume_timeout=30)
        assert resumes == 0
        assert len(cls.reference) > 1000, len(cls.reference)

    def test_two_restarts_mid_pipeline(self):
        d = Daemon({"log_level": "info", "session_linger": "60s", "snapshot_interval": 0,
                    "data_dir": "DATA"}).start()
        self.addCleanup(d.stop)
        rnd = random.Random(SEED)
        at = sorted(rnd.sample(range(4, NOPS // CHUNK - 4), 2))
        threads, failures = [], []

        def on_chunk(n):
            if n in at:
                restart_in_background(d, threads, failures)
                if n == at[-1]:
                    return
            while threads and not threads[0].is_alive():
                threads.pop(0).join()

        dump, resumes = drive("unix:" + d.sock_path, on_chunk, resume_timeout=30)
        for t in threads:
            t.join()
        self.assertEqual(failures, [])
        self.assertGreaterEqual(resumes, 2)
        self.assertEqual(dump, self.reference)
        self.assertEqual(sum("restored 1 session" in line for line in d.log()), 2)

    def test_cut_links(self):
        proxy, url = cutting_proxy(self, SEED)
        assert_resumed_through(self, proxy, drive(url, resume_timeout=30), self.reference)

    def test_lost_responses_are_answered_from_the_window(self):
        proxy, url = cutting_proxy(self, SEED + 1, responses=True)
        assert_resumed_through(self, proxy, drive(url, resume_timeout=30), self.reference)

    def test_asyncio_lost_responses_and_a_restart(self):
        d = Daemon({"log_level": "info", "session_linger": "60s", "snapshot_interval": 0,
                    "data_dir": "DATA"}).start()
        self.addCleanup(d.stop)
        proxy, url = cutting_proxy(self, SEED + 2, responses=True, daemon=d)
        assert_resumed_through(self, proxy, asyncio.run(adrive(url, resume_timeout=30)),
                               self.reference)
        # And through a restart while a pipeline is in flight, on the Unix socket.
        threads, failures = [], []

        def on_chunk(n):
            if n == NOPS // CHUNK // 2:
                restart_in_background(d, threads, failures)

        dump, resumes = asyncio.run(adrive("unix:" + d.sock_path, on_chunk, resume_timeout=30))
        for t in threads:
            t.join()
        self.assertEqual(failures, [])
        self.assertGreaterEqual(resumes, 1)
        self.assertEqual(dump, self.reference)

    def test_without_resume_timeout_a_drop_raises(self):
        d = Daemon({"session_linger": "60s"}).start()
        self.addCleanup(d.stop)
        proxy = Proxy(d.tcp_addr, SEED)
        self.addCleanup(proxy.close)
        s = heapd.connect("tcp://127.0.0.1:%d" % proxy.port, timeout=30)
        with self.assertRaises(heapd.ConnectionClosed):
            for _ in range(200):
                with s.pipeline() as p:
                    for _ in range(500):
                        p.alloc(size=40, data=b"x" * 40)
        self.assertEqual(s.resumes, 0)
        self.assertFalse(s.connected)

    def test_detached_is_not_resumed_behind_the_callers_back(self):
        d = Daemon({"session_linger": "60s"}).start()
        self.addCleanup(d.stop)
        s = heapd.connect("unix:" + d.sock_path, resume_timeout=10)
        r = s.alloc(size=8)
        s.detach()
        with self.assertRaises(heapd.ConnectionClosed):
            s.stats()
        s.reconnect()
        self.assertEqual(s.getrefcount(r), 1)
        self.assertEqual(s.resumes, 0)
        s.close()

    def test_limits_carry_the_replay_window(self):
        d = Daemon({"replay_window": 64}).start()
        self.addCleanup(d.stop)
        s = heapd.connect("unix:" + d.sock_path, resume_timeout=10)
        self.assertEqual(s.limits.replay_window, 64)
        # A pipeline longer than the window still completes: the client waits for answers
        # rather than leave more than 64 unanswered.
        with s.pipeline() as p:
            for _ in range(1000):
                p.ping()
        self.assertEqual(len(p.results), 1000)
        s.close()


if __name__ == "__main__":
    harness.main()
