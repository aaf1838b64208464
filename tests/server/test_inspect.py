# SPDX-License-Identifier: MIT
"""test_inspect.py: an admin looks into and acts on other sessions (session_report, session_op).

The session may live on any worker: the request goes to that worker and its answer comes
back in request order. Checks the report's figures against what the victim did, that the
actions (collect, thresholds, enable/disable, tracing) change the victim's own heap as seen by
the victim, that events raised there reach the victim's client, and every refusal.
"""

import unittest

import harness as h
from harness import pb

ADMIN = "adm1n"


def req_session_op(c, session_id, op):
    rq = c.req("session_op", session_id=session_id)
    rq.session_op.op.CopyFrom(op)
    return rq


def session_op(c, session_id, op):
    """op (a Request) run in session_id; returns the outer response."""
    rq = req_session_op(c, session_id, op)
    c.send_request(rq)
    resp = c.recv_response()
    assert resp.id == rq.id
    return resp


def inner(c, session_id, name, **fields):
    """The response of op `name` run in session_id (session_op itself must succeed)."""
    r = session_op(c, session_id, h.make_request(99, name, **fields))
    if r.status.code != 0:
        raise AssertionError("session_op failed: %s %s" % (r.status.name, r.status.message))
    return r.session_op


class InspectTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = h.Daemon({"admin_tokens": [ADMIN], "workers": 3, "session_linger": "60s"})
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def setUp(self):
        self.adm = self.d.session(token=ADMIN, client_name="operator")
        self.assertTrue(self.adm.hello_result.admin)

    def victim(self, name="victim"):
        v = self.d.session(client_name=name)
        return v, v.hello_result.session_id

    def test_reports_from_every_worker(self):
        victims = []
        for i in range(6):
            v, vid = self.victim("victim-%d" % i)
            for _ in range(i + 1):
                v.alloc(size=32, slots=1, tag="T%d" % i, site="s.py:%d" % i)
            victims.append((v, vid, i + 1))
        workers = set()
        for v, vid, n in victims:
            r = self.adm.ok("session_report", session_id=vid)
            self.assertEqual(r.session.id, vid)
            self.assertEqual(r.session.client_name, "victim-%d" % (n - 1))
            self.assertEqual((r.heap.objects, r.heap.containers), (n, n))
            self.assertEqual(r.session.requests, n)
            self.assertEqual(r.session.last_op, "alloc")
            self.assertTrue(r.session.attached)
            self.assertTrue(r.session.peer.startswith("unix:pid="), r.session.peer)
            self.assertEqual([(s.key, s.count) for s in r.tags_by_count], [("T%d" % (n - 1), n)])
            self.assertEqual([(s.key, s.count) for s in r.sites_by_bytes],
                             [("s.py:%d" % (n - 1), n)])
            self.assertEqual((r.tags, r.sites), (1, 1))
            self.assertEqual(r.heap.alloc_bytes_total, r.heap.object_bytes)
            workers.add(r.session.worker)
        self.assertGreater(len(workers), 1, "every victim on one worker: nothing crossed")

    def test_answers_keep_request_order(self):
        v, vid = self.victim()
        v.alloc(size=8)
        a = self.adm
        reqs = [a.req("ping"), a.req("session_report", session_id=vid),
                a.req("heap_stats"), req_session_op(a, vid, h.make_request(5, "gc_get_count")),
                a.req("session_report", session_id="0123456789abcdef"), a.req("ping")]
        a.send_raw(b"".join(h.frame(pb.ClientFrame(request=r).SerializeToString())
                            for r in reqs))
        got = [a.recv_response() for _ in reqs]
        self.assertEqual([r.id for r in got], [r.id for r in reqs])
        self.assertEqual([r.status.name for r in got],
                         ["OK", "OK", "OK", "OK", "ENOSESSION", "OK"])
        self.assertEqual(got[1].session_report.heap.objects, 1)
        self.assertEqual(got[2].heap_stats.objects, 0)  # the admin's own heap
        self.assertEqual(len(got[3].session_op.gc_get_count.count), 3)

    def test_actions_change_the_victims_heap(self):
        v, vid = self.victim()
        self.assertEqual(inner(self.adm, vid, "gc_disable").status.name, "OK")
        self.assertFalse(v.ok("gc_isenabled").value)
        self.assertEqual(inner(self.adm, vid, "gc_enable").status.name, "OK")
        self.assertTrue(v.ok("gc_isenabled").value)
        inner(self.adm, vid, "gc_set_threshold", threshold=[5, 6, 7])
        self.assertEqual(list(v.ok("gc_get_threshold").threshold), [5, 6, 7])
        self.assertEqual(list(inner(self.adm, vid, "gc_get_threshold").gc_get_threshold
                              .threshold), [5, 6, 7])
        inner(self.adm, vid, "trace_start")
        self.assertTrue(v.ok("trace_is_tracing").value)
        objs = [v.alloc(size=64, site="hot.py:9", tag="Hot") for _ in range(4)]
        r = self.adm.ok("session_report", session_id=vid)
        self.assertTrue(r.tracing)
        self.assertGreater(r.traced_current, 0)
        self.assertEqual([(s.key, s.count) for s in r.traced_sites], [("hot.py:9", 4)])
        top = inner(self.adm, vid, "trace_top", group=pb.BY_TAG).trace_top
        self.assertEqual([(s.key, s.count) for s in top.stats], [("Hot", 4)])
        census = inner(self.adm, vid, "heap_census", group=pb.BY_TAG, order=pb.BY_COUNT).heap_census
        self.assertEqual([(s.key, s.count) for s in census.stats], [("Hot", 4)])
        inner(self.adm, vid, "trace_stop")
        self.assertFalse(v.ok("trace_is_tracing").value)
        self.assertEqual(inner(self.adm, vid, "heap_stats").heap_stats.objects, 4)
        # An op that fails in the victim's heap: session_op is OK, the op is not.
        r = session_op(self.adm, vid, h.make_request(3, "gc_collect", generation=7))
        self.assertEqual((r.status.name, r.session_op.status.name), ("OK", "EINVAL"))
        for o in objs:
            v.ok("decref", handle=o)

    def test_events_reach_the_victims_client(self):
        v, vid = self.victim()
        v.ok("set_events", mask=0x1E)  # finalized, weakref_cleared, gc_start, gc_stop
        a = v.alloc(slots=1, tag="Ring", flags=1)
        b = v.alloc(slots=1, tag="Ring")
        v.ok("set_slot", handle=a, index=0, target=b)
        v.ok("set_slot", handle=b, index=0, target=a)
        v.ok("decref", handle=a)
        v.ok("decref", handle=b)
        found = inner(self.adm, vid, "gc_collect").gc_collect.value
        self.assertEqual(found, 2)
        v.ok("ping")  # a barrier: everything sent before its response has arrived
        kinds = [e.WhichOneof("kind") for e in v.events]
        self.assertEqual(kinds, ["gc_start", "finalized", "gc_stop"])
        self.assertEqual(v.events[1].finalized.handle, a)
        r = self.adm.ok("session_report", session_id=vid)
        self.assertEqual(r.session.collections, 1)
        self.assertGreater(r.heap.gc_pause_ns_total, 0)
        self.assertEqual(r.events_queued, 0)

    def test_a_detached_session(self):
        v, vid = self.victim()
        v.ok("set_events", mask=0x18)
        v.alloc(size=10)
        v.close()  # no goodbye: it lingers
        r = h.wait_until(lambda: (lambda r: r if not r.session.attached else None)(
            self.adm.ok("session_report", session_id=vid)))
        self.assertIsNotNone(r, "the session never detached")
        self.assertEqual(r.output_bytes, 0)
        inner(self.adm, vid, "gc_collect")
        r = self.adm.ok("session_report", session_id=vid)
        self.assertEqual(r.events_queued, 2)  # kept for its client's return
        self.adm.ok("kill_session", session_id=vid)
        self.assertEqual(self.adm.call("session_report", session_id=vid).status.name,
                         "ENOSESSION")

    def test_itself(self):
        a = self.adm
        mine = a.hello_result.session_id
        a.ok("set_events", mask=0x18)
        rq = req_session_op(a, mine, h.make_request(4, "gc_collect"))
        a.send_request(rq)
        f = a.recv_frame()
        self.assertEqual(f.WhichOneof("kind"), "response")  # its events come after it
        self.assertEqual(f.response.session_op.status.name, "OK")
        a.ok("ping")
        self.assertEqual([e.WhichOneof("kind") for e in a.events], ["gc_start", "gc_stop"])
        r = a.ok("session_report", session_id=mine)
        self.assertEqual(r.session.client_name, "operator")
        self.assertTrue(r.session.admin)

    def test_refusals(self):
        v, vid = self.victim()
        r = session_op(v, vid, h.make_request(1, "heap_stats"))
        self.assertEqual(r.status.name, "EPERM")
        self.assertIn("admin", r.status.message)
        self.assertEqual(v.call("session_report", session_id=vid).status.name, "EPERM")
        for op in ("alloc", "gc_freeze", "trace_snapshot", "ping", "kill_session",
                   "session_report"):
            r = session_op(self.adm, vid, h.make_request(1, op))
            self.assertEqual(r.status.name, "EPERM", op)
            self.assertIn("cannot be run in another session", r.status.message)
        nested = pb.Request(id=2, session_op=pb.SessionOp(session_id=vid,
                                                          op=h.make_request(3, "heap_stats")))
        self.assertEqual(session_op(self.adm, vid, nested).status.name, "EPERM")
        self.assertEqual(session_op(self.adm, vid, pb.Request(id=4)).status.name, "EINVAL")
        self.assertEqual(self.adm.call("session_report", session_id=vid, top=101).status.name,
                         "EINVAL")
        for bad in ("", "x" * 100):
            self.assertEqual(self.adm.call("session_report", session_id=bad).status.name,
                             "ENOSESSION")
        batch = pb.Batch(ops=[req_session_op(self.adm, vid, h.make_request(5, "heap_stats")),
                              self.adm.req("session_report", session_id=vid),
                              self.adm.req("ping")])
        r = self.adm.ok("batch", ops=batch.ops)
        self.assertEqual([x.status.name for x in r.results], ["EINVAL", "EINVAL", "OK"])
        self.assertEqual(self.adm.ok("ping").server_time_unix_ns > 0, True)


if __name__ == "__main__":
    h.main()
