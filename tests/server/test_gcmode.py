# SPDX-License-Identifier: MIT
"""test_gcmode.py: gc_mode: incremental, against the real heapd (issue 11).

A session whose heap collects its old generation incrementally: long-lived cyclic garbage
goes without any explicit collection, while the session allocates; collect(2) during a cycle
still returns what a complete collection finds (here: what is left of the garbage); the
increments show in /metrics as pauses, not as collections of generation 2; and a session of
the default mode, beside it, keeps CPython's full collections. No durations are asserted:
the pauses are measured by bench/gcinc_compare.c (docs/PERFORMANCE.md).
"""


import harness as h
from harness import pb


def batch(c, ops):
    return c.ok("batch", ops=[h.make_request(i + 1, op, **f)
                              for i, (op, f) in enumerate(ops)]).results


def old_garbage(c, rings, watch=0):
    """rings rings of two, made old (promoted by a collection of generation 1), then dropped:
    garbage that only a collection of generation 2 can free. The first watch rings get a weak
    reference that notifies when it dies; returns those weak handles."""
    hs = []
    for i in range(0, 2 * rings, 2000):
        hs += [r.alloc.handle for r in batch(c, [("alloc", dict(slots=1))] *
                                             min(2000, 2 * rings - i))]
    links = []
    for i in range(0, len(hs), 2):
        links += [("set_slot", dict(handle=hs[i], index=0, target=hs[i + 1])),
                  ("set_slot", dict(handle=hs[i + 1], index=0, target=hs[i]))]
    for i in range(0, len(links), 4000):
        batch(c, links[i:i + 4000])
    c.ok("gc_collect", generation=1)
    weaks = [c.ok("weakref_new", handle=hs[2 * i], notify=True).weak for i in range(watch)]
    for i in range(0, len(hs), 4000):
        batch(c, [("decref", dict(handle=x)) for x in hs[i:i + 4000]])
    return weaks


def churn(c, n):
    """n allocations of young garbage (rings of two): young collections, and increments."""
    for _ in range(n // 1000):
        hs = [r.alloc.handle for r in batch(c, [("alloc", dict(slots=1))] * 1000)]
        ops = []
        for i in range(0, len(hs), 2):
            ops += [("set_slot", dict(handle=hs[i], index=0, target=hs[i + 1])),
                    ("set_slot", dict(handle=hs[i + 1], index=0, target=hs[i]))]
        ops += [("decref", dict(handle=x)) for x in hs]
        batch(c, ops)


class GcModeTest(h.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Thresholds that reach generation 2 soon (every 9 young collections), so that a
        # cycle starts within a few thousand allocations.
        cls.d = h.Daemon({"workers": 1, "gc_mode": "incremental", "gc_increment_objects": 500,
                          "gc_threshold": [700, 2, 2], "offload_above": 0,
                          "http": ["127.0.0.1:0"]}).start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def metrics(self):
        status, _, body = self.d.http_get("/metrics")
        self.assertEqual(status, 200)
        return h.parse_metrics(body.decode())

    def test_old_garbage_goes_without_a_full_collection(self):
        c = self.d.session()
        c.ok("set_events", mask=1 << pb.WEAKREF_CLEARED)
        weaks = set(old_garbage(c, 3000, watch=20))
        self.assertEqual(c.ok("heap_stats").objects, 6000)
        before = c.ok("gc_get_stats").generations[2]
        # Allocating drives the young collections, the trigger and the increments; the old
        # garbage goes within a bounded number of them (the cycle's bound: 6,000 objects and
        # what churning promotes, 500 units an increment, one every 64 allocations).
        cleared = lambda: {e.weakref_cleared.weak for e in c.events
                           if e.WhichOneof("kind") == "weakref_cleared"}
        for _ in range(12):
            churn(c, 4000)
            if cleared() == weaks:
                break
        self.assertEqual(cleared(), weaks)
        for _ in range(12):  # the weak references go first; the cycle ends a little later
            if c.ok("gc_get_stats").generations[2].collections > before.collections:
                break
            churn(c, 2000)
        after = c.ok("gc_get_stats").generations[2]
        self.assertGreaterEqual(after.collections, before.collections + 1)
        self.assertGreaterEqual(after.collected, before.collected + 6000)
        # What is left is garbage churning made since: a complete collection finds it all.
        c.ok("gc_collect", generation=1)
        left = c.ok("heap_stats").objects
        self.assertLess(left, 6000)
        self.assertEqual(c.ok("gc_collect", generation=2).value, left)
        c.ok("goodbye")

    def test_collect2_during_a_cycle_is_complete(self):
        c = self.d.session()
        keep = c.alloc(slots=1)
        old_garbage(c, 2000)
        churn(c, 8000)  # a cycle is under way (or over): part of the garbage may be gone
        c.ok("gc_collect", generation=1)
        left = c.ok("heap_stats").objects - 1
        self.assertEqual(c.ok("gc_collect", generation=2).value, left)
        self.assertEqual(c.ok("heap_stats").objects, 1)
        self.assertEqual(c.ok("getrefcount", handle=keep).value, 1)
        c.ok("goodbye")

    def test_increments_are_pauses_not_collections(self):
        m0 = self.metrics()
        c = self.d.session()
        old_garbage(c, 2000)
        churn(c, 20000)
        c.ok("ping")
        m1 = h.wait_until(lambda: (lambda m: m if m[("heapd_gc_pause_seconds_count",
                                                     frozenset())] > m0[(
            "heapd_gc_pause_seconds_count", frozenset())] else None)(self.metrics()))
        k = lambda n, **l: (n, frozenset(l.items()))
        pauses = m1[k("heapd_gc_pause_seconds_count")] - m0[k("heapd_gc_pause_seconds_count")]
        colls = sum(m1[k("heapd_gc_collections_total", generation=str(g))]
                    - m0[k("heapd_gc_collections_total", generation=str(g))] for g in range(3))
        self.assertGreater(pauses, colls)  # the increments between
        c.ok("goodbye")


class ModeOpTest(h.unittest.TestCase):
    """gc_set_mode and gc_get_mode: a session's own mode, beside the config's default."""

    @classmethod
    def setUpClass(cls):
        cls.d = h.Daemon({"workers": 1, "admin_tokens": ["adm"]}).start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def test_a_session_chooses_its_mode(self):
        c, other = self.d.session(), self.d.session()
        m = c.ok("gc_get_mode")
        self.assertEqual((m.mode, m.increment_objects, m.phase, m.cycles),
                         (pb.GENERATIONAL, 4000, 0, 0))
        m = c.ok("gc_set_mode", mode=pb.INCREMENTAL, increment_objects=500)
        self.assertEqual((m.mode, m.increment_objects), (pb.INCREMENTAL, 500))
        c.ok("gc_set_threshold", threshold=[700, 2, 2])
        other.ok("gc_set_threshold", threshold=[700, 2, 2])
        # Refused requests change nothing.
        for fields in (dict(mode=7), dict(mode=pb.GENERATIONAL, increment_objects=2**32 + 1)):
            r = c.call("gc_set_mode", **fields)
            self.assertEqual(r.status.name, "EINVAL", fields)
        self.assertEqual(c.ok("gc_get_mode").mode, pb.INCREMENTAL)
        self.assertEqual(c.ok("gc_get_mode").increment_objects, 500)
        # The session's old garbage goes by increments while it allocates; the other
        # session, on the same worker and the same workload, keeps CPython's collector:
        # nothing but a full collection frees its old garbage.
        for s in (c, other):
            old_garbage(s, 1000)
            churn(s, 6000)
        cycles = lambda: c.ok("gc_get_mode").cycles
        for _ in range(12):
            if cycles():
                break
            churn(c, 2000)
        self.assertGreaterEqual(cycles(), 1)
        self.assertEqual(other.ok("gc_get_mode").mode, pb.GENERATIONAL)
        self.assertEqual(other.ok("gc_get_mode").cycles, 0)
        # Leaving incremental mode ends a running cycle: none runs after it.
        old_garbage(c, 1000)
        churn(c, 3000)
        m = c.ok("gc_set_mode", mode=pb.GENERATIONAL)
        self.assertEqual((m.mode, m.phase, m.increment_objects), (pb.GENERATIONAL, 0, 500))
        c.ok("gc_collect", generation=1)
        left = c.ok("heap_stats").objects
        self.assertEqual(c.ok("gc_collect", generation=2).value, left)
        c.ok("goodbye")
        other.ok("goodbye")

    def test_an_operator_sets_a_sessions_mode(self):
        c, adm = self.d.session(), self.d.session(token="adm")
        sid = c.hello_result.session_id
        rq = adm.req("session_op", session_id=sid)
        rq.session_op.op.CopyFrom(h.make_request(1, "gc_set_mode", mode=pb.INCREMENTAL))
        adm.send_request(rq)
        r = adm.recv_response()
        self.assertEqual((r.status.name, r.session_op.status.name), ("OK", "OK"))
        self.assertEqual(r.session_op.gc_set_mode.mode, pb.INCREMENTAL)
        self.assertEqual(c.ok("gc_get_mode").mode, pb.INCREMENTAL)
        c.ok("goodbye")


class DefaultModeTest(h.unittest.TestCase):
    def test_the_default_is_generational(self):
        d = h.Daemon({"workers": 1}).start()
        try:
            c = d.session()
            old_garbage(c, 500)
            churn(c, 20000)
            c.ok("gc_collect", generation=1)
            # Nothing but a full collection frees old garbage in generational mode, and the
            # thresholds ask for none yet (what churning promoted is garbage too).
            left = c.ok("heap_stats").objects
            self.assertGreaterEqual(left, 1000)
            self.assertEqual(c.ok("gc_get_stats").generations[2].collections, 0)
            self.assertEqual(c.ok("gc_collect", generation=2).value, left)
        finally:
            d.stop()


if __name__ == "__main__":
    h.unittest.main()
