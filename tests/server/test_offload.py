# SPDX-License-Identifier: MIT
"""test_offload.py: long requests run off the worker's loop (issue 11; issue 9 item 6).

With one worker, a session whose requests may do more work than offload_above (a collection
of its heap, a long batch) has them run on the thread pool while the worker's other sessions
are served; its later requests wait and are answered in order. These tests assert order and
results, never durations: a "long" batch here is thousands of full collections of a heap of
tens of thousands of objects, which would run for many seconds, and each test ends it early
(shutdown, a drop, a kill) or lets a short one finish. The daemon runs with debug logs, and
"run off the loop" in the log says a job has started.
"""

import json
import re
import select
import signal
import socket

import harness as h
from harness import pb

OFFLOAD = r"session %s: \d+ bytes of requests run off the loop"


def batch_req(c, ops):
    """A batch request (not sent) of (op, fields) pairs."""
    return c.req("batch", ops=[h.make_request(i + 1, op, **f) for i, (op, f) in enumerate(ops)])


def run_batch(c, ops):
    return c.ok("batch", ops=[h.make_request(i + 1, op, **f)
                              for i, (op, f) in enumerate(ops)]).results


def build_rings(c, pairs):
    """pairs two-slot containers linked in rings of two; returns (kept, garbage) handles: the
    client keeps one reference per ring of the first half, the second half is garbage."""
    handles = []
    for _ in range(0, 2 * pairs, 2000):
        handles += [r.alloc.handle for r in run_batch(c, [("alloc", dict(slots=2))] * 2000)]
    handles = handles[:2 * pairs]
    links = []
    for i in range(0, len(handles), 2):
        links.append(("set_slot", dict(handle=handles[i], index=0, target=handles[i + 1])))
        links.append(("set_slot", dict(handle=handles[i + 1], index=0, target=handles[i])))
    for i in range(0, len(links), 4000):
        for r in run_batch(c, links[i:i + 4000]):
            assert r.status.code == 0, r.status
    drop = [("decref", dict(handle=x)) for x in handles[1::2]]  # one ref per ring kept
    drop += [("decref", dict(handle=x)) for x in handles[pairs:][::2]]  # second half: garbage
    for i in range(0, len(drop), 4000):
        run_batch(c, drop[i:i + 4000])
    return handles[:pairs:2], handles[pairs:]


class OffloadTest(h.unittest.TestCase):
    def setUp(self):
        self.d = h.Daemon({"workers": 1, "offload_above": 1000, "admin_tokens": ["adm"]}).start()

    def tearDown(self):
        self.d.stop()

    def long_batch(self, c, n=20000):
        """Sends a batch of n full collections (many seconds of work) and waits until its job
        has started; returns the request."""
        mark = len(self.d.log())
        rq = batch_req(c, [("gc_collect", dict(generation=2))] * n)
        c.send_request(rq)
        self.d.wait_log(OFFLOAD % c.hello_result.session_id, start=mark)
        return rq

    def test_others_served_in_order_while_a_heap_is_collected(self):
        heavy, light = self.d.session(), self.d.session()
        kept, garbage = build_rings(heavy, 5000)
        # Pipelined: a collection of the 20,000-object heap (off the loop), a ping, a batch
        # whose work is over the bound, and a request that reads the result of the first.
        ids = [heavy.send("gc_collect", generation=2), heavy.send("ping")]
        rq = batch_req(heavy, [("alloc", dict(slots=2)), ("gc_collect", dict(generation=2)),
                               ("getrefcount", dict(handle=kept[0]))])
        heavy.send_request(rq)
        ids += [rq.id, heavy.send("gc_get_stats")]
        # The light session is served meanwhile, and correctly.
        x = light.alloc(slots=1)
        light.ok("set_slot", handle=x, index=0, target=x)
        self.assertEqual(light.ok("getrefcount", handle=x).value, 2)
        light.ok("decref", handle=x)
        self.assertEqual(light.ok("gc_collect", generation=2).value, 1)
        # The heavy session's answers, in order, with CPython's counts.
        got = [heavy.recv_response() for _ in ids]
        self.assertEqual([r.id for r in got], ids)
        self.assertEqual([r.status.code for r in got], [0, 0, 0, 0])
        self.assertEqual(got[0].gc_collect.value, len(garbage))
        sub = got[2].batch.results
        self.assertEqual([r.status.code for r in sub], [0, 0, 0])
        self.assertEqual(sub[1].gc_collect.value, 0)
        self.assertEqual(sub[2].getrefcount.value, 2)  # the client's, and its ring partner's
        self.assertEqual(got[3].gc_get_stats.generations[2].collections, 2)
        self.assertEqual(heavy.ok("heap_stats").objects, len(kept) * 2 + 1)
        self.d.wait_log(OFFLOAD % heavy.hello_result.session_id)
        light_offloaded = re.compile(OFFLOAD % light.hello_result.session_id)
        self.assertFalse(any(light_offloaded.search(line) for line in self.d.log()))

    def test_a_light_session_is_answered_before_a_long_batch_ends(self):
        heavy, light = self.d.session(), self.d.session(token="adm")
        build_rings(heavy, 5000)
        rq = self.long_batch(heavy)
        for _ in range(20):
            light.ok("ping")
        # Still running: nothing from the heavy session yet. A batch on a large heap that asks
        # for the server's info runs on the loop (the info is the loop's), and is answered in
        # full.
        self.assertEqual(select.select([heavy.sock], [], [], 0)[0], [])
        build_rings(light, 1000)
        res = run_batch(light, [("gc_collect", dict(generation=2)), ("server_info", dict())])
        self.assertEqual([x.status.code for x in res], [0, 0])
        self.assertTrue(len(res[1].server_info.sections) > 0)
        light.ok("kill_session", session_id=heavy.hello_result.session_id)
        got = heavy.expect_closed()
        self.assertEqual([(r.id, r.status.name) for r in got], [(0, "ENOSESSION")])
        self.d.wait_log("session %s destroyed" % heavy.hello_result.session_id)
        sessions = light.ok("list_sessions").sessions
        self.assertEqual([s.id for s in sessions], [light.hello_result.session_id])
        del rq

    def test_an_operators_look_waits_for_the_job(self):
        # An operator's session_report of a session whose heap is a job's waits for the job
        # (its heap is the pool thread's until then) and is answered when the job is back:
        # here the heavy client drops, the batch stops at its next op, and the detached
        # session is reported whole. Other sessions are served meanwhile, the operator's own
        # later requests wait behind the report, in order.
        heavy, adm, light = self.d.session(), self.d.session(token="adm"), self.d.session()
        sid = heavy.hello_result.session_id
        kept, garbage = build_rings(heavy, 5000)
        self.long_batch(heavy)
        ids = [adm.send("session_report", session_id=sid), adm.send("ping")]
        for _ in range(5):
            light.ok("ping")
        self.assertEqual(select.select([adm.sock], [], [], 0)[0], [])  # the job still runs
        heavy.sock.close()
        got = [adm.recv_response() for _ in ids]
        self.assertEqual([(r.id, r.status.name) for r in got], [(ids[0], "OK"), (ids[1], "OK")])
        rep = got[0].session_report
        self.assertEqual(rep.session.id, sid)
        self.assertFalse(rep.session.attached)
        # The batch stopped after some collection, or before its first began.
        self.assertIn(rep.heap.objects, (len(kept) * 2, len(kept) * 2 + len(garbage)))
        # A look that waits for a job whose session is killed meanwhile: ENOSESSION.
        again = self.d.session()
        build_rings(again, 5000)
        self.long_batch(again)
        rq = adm.req("session_op", session_id=again.hello_result.session_id)
        rq.session_op.op.CopyFrom(h.make_request(7, "heap_stats"))
        adm.send_request(rq)
        self.d.session(token="adm").ok("kill_session", session_id=again.hello_result.session_id)
        r = adm.recv_response()
        rid = rq.id
        self.assertEqual((r.id, r.status.name), (rid, "ENOSESSION"))

    def test_sigterm_stops_the_batch_and_answers_what_ran(self):
        heavy = self.d.session()
        build_rings(heavy, 5000)
        rq = self.long_batch(heavy)
        self.d.signal(signal.SIGTERM)
        got = heavy.expect_closed()
        self.assertEqual([r.id for r in got], [rq.id, 0])
        res = got[0]
        self.assertEqual(res.status.name, "ESHUTDOWN")
        self.assertIn("batch stopped before op", res.status.message)
        results = res.batch.results
        self.assertLess(len(results), 20000)
        self.assertEqual(results[-1].status.name, "ESHUTDOWN")
        self.assertTrue(all(r.status.code == 0 for r in results[:-1]))
        if len(results) > 1:
            self.assertEqual(results[0].gc_collect.value, 5000)
        self.assertEqual(got[1].status.name, "ESHUTDOWN")
        self.assertEqual(self.d.wait_exit(), 0)

    def test_drop_during_a_collection_then_resume(self):
        heavy = self.d.session()
        kept, garbage = build_rings(heavy, 5000)
        sid, token = heavy.hello_result.session_id, heavy.hello_result.resume_token
        mark = len(self.d.log())
        heavy.send("gc_collect", generation=2)
        self.d.wait_log(OFFLOAD % sid, start=mark)
        heavy.close()
        self.d.wait_log("session %s detached" % sid, start=mark)
        # Resumed at once; answered once the collection is done, which it is, whole.
        again = self.d.connect()
        self.assertTrue(again.hello(session_id=sid, resume_token=token).hello.resumed)
        again.ok("ping")
        self.assertEqual(again.ok("gc_get_stats").generations[2].collections, 1)
        self.assertEqual(again.ok("gc_collect", generation=2).value, 0)
        self.assertEqual(again.ok("getrefcount", handle=kept[0]).value, 2)
        self.assertEqual(again.ok("heap_stats").objects, len(kept) * 2)
        again.ok("goodbye")

    def test_drop_during_a_long_batch_stops_it(self):
        heavy = self.d.session()
        kept, garbage = build_rings(heavy, 5000)
        sid, token = heavy.hello_result.session_id, heavy.hello_result.resume_token
        self.long_batch(heavy)
        heavy.close()  # a Unix socket: the server sees the whole close
        self.d.wait_log("session %s detached" % sid)
        # The batch stops (no one reads its answer) and the session is resumed whole.
        again = self.d.connect()
        self.assertTrue(again.hello(session_id=sid, resume_token=token).hello.resumed)
        again.ok("ping")
        # It may have stopped before its first collection, or after some.
        self.assertIn(again.ok("gc_collect", generation=2).value, (0, len(garbage)))
        self.assertEqual(again.ok("heap_stats").objects, len(kept) * 2)
        again.ok("goodbye")

    def test_drop_without_linger_destroys_after_the_job(self):
        self.d.stop()
        self.d = h.Daemon({"workers": 1, "offload_above": 1000, "session_linger": 0}).start()
        heavy = self.d.session()
        build_rings(heavy, 5000)
        sid = heavy.hello_result.session_id
        self.long_batch(heavy)
        heavy.close()
        self.d.wait_log("session %s destroyed" % sid)
        self.d.session().ok("ping")

    def test_goodbye_waits_for_the_collection_before_it(self):
        heavy = self.d.session()
        kept, garbage = build_rings(heavy, 5000)
        sid = heavy.hello_result.session_id
        ids = [heavy.send("gc_collect", generation=2), heavy.send("goodbye")]
        got = heavy.expect_closed()
        self.assertEqual([(r.id, r.status.code) for r in got], [(ids[0], 0), (ids[1], 0)])
        self.assertEqual(got[0].gc_collect.value, len(garbage))
        self.d.wait_log("session %s destroyed \\(goodbye\\)" % sid)

    def test_a_client_that_stops_sending_still_gets_every_answer(self):
        heavy = self.d.session()
        kept, garbage = build_rings(heavy, 5000)
        ids = [heavy.send("gc_collect", generation=2), heavy.send("ping")]
        heavy.sock.shutdown(socket.SHUT_WR)
        got = heavy.expect_closed()
        self.assertEqual([(r.id, r.status.code) for r in got], [(ids[0], 0), (ids[1], 0)])
        self.assertEqual(got[0].gc_collect.value, len(garbage))

    def test_events_of_a_job_come_between_its_answer_and_the_next(self):
        heavy = self.d.session()
        kept, garbage = build_rings(heavy, 5000)
        w = heavy.ok("weakref_new", handle=garbage[0], notify=True).weak
        mask = (1 << pb.GC_START) | (1 << pb.GC_STOP) | (1 << pb.WEAKREF_CLEARED)
        heavy.ok("set_events", mask=mask)
        sid = heavy.hello_result.session_id
        mark = len(self.d.log())
        # Pipelined: a collection off the loop, then two pings behind it.
        ids = [heavy.send("gc_collect", generation=2), heavy.send("ping"), heavy.send("ping")]
        frames = [heavy.recv_frame() for _ in range(6)]
        self.d.wait_log(OFFLOAD % sid, start=mark)
        kinds = [f.response.id if f.WhichOneof("kind") == "response"
                 else f.event.WhichOneof("kind") for f in frames]
        self.assertEqual(kinds, [ids[0], "gc_start", "weakref_cleared", "gc_stop", ids[1], ids[2]])
        self.assertEqual(frames[0].response.gc_collect.value, len(garbage))
        self.assertEqual(frames[2].event.weakref_cleared.weak, w)
        self.assertEqual(frames[3].event.gc_stop.collected, len(garbage))

    def test_requests_after_a_long_batch_wait_behind_it(self):
        heavy = self.d.session()
        build_rings(heavy, 200)
        # A batch over the bound on a small heap (its ops together), then a ping: both
        # answered, in order.
        rq = batch_req(heavy, [("alloc", dict(slots=1))] * 3000)
        heavy.send_request(rq)
        pid = heavy.send("ping")
        a, b = heavy.recv_response(), heavy.recv_response()
        self.assertEqual((a.id, b.id), (rq.id, pid))
        self.assertEqual(len(a.batch.results), 3000)
        self.assertTrue(all(r.status.code == 0 for r in a.batch.results))


class OffloadMetricsTest(h.unittest.TestCase):
    """The HTTP server reads the worker's metrics while a job has a heap: /metrics and the
    session list are served from what the worker took before the job, the job's session page
    is not taken (the heap is the job's), and what a job counted is there once it is back."""

    def setUp(self):
        self.d = h.Daemon({"workers": 1, "offload_above": 1000, "admin_tokens": ["adm"],
                           "http": ["127.0.0.1:0"]}).start()

    def tearDown(self):
        self.d.stop()

    def metrics(self):
        status, _, body = self.d.http_get("/metrics")
        self.assertEqual(status, 200)
        return h.parse_metrics(body.decode())

    def listed(self):
        status, _, body = self.d.http_get("/api/sessions")
        self.assertEqual(status, 200)
        return {s["id"]: s for s in json.loads(body)["sessions"]}

    def test_metrics_while_a_job_runs_and_after(self):
        heavy, light = self.d.session(), self.d.session(token="adm")
        kept, garbage = build_rings(heavy, 5000)
        sid = heavy.hello_result.session_id
        objects = len(kept) * 2 + len(garbage)
        # The worker's snapshot has the heavy session's heap as it is now.
        self.assertTrue(h.wait_until(
            lambda: self.listed().get(sid, {}).get("objects") == objects))
        k = lambda n, **l: (n, frozenset(l.items()))
        before = self.metrics()
        # One collection off the loop: its op, its status and the collection are counted.
        self.assertEqual(heavy.ok("gc_collect", generation=2).value, len(garbage))
        self.d.wait_log(OFFLOAD % sid)
        after = self.metrics()
        for key, n in ((k("heapd_requests_total", op="gc_collect"), 1),
                       (k("heapd_gc_collections_total", generation="2"), 1),
                       (k("heapd_gc_collected_total", generation="2"), len(garbage)),
                       (k("heapd_gc_pause_seconds_count"), 1)):
            self.assertEqual(after[key] - before[key], n, key)
        # A long batch: while it runs, the metrics and the list are served, and the session
        # keeps the figures of the worker's last look at its heap.
        self.assertTrue(h.wait_until(
            lambda: self.listed().get(sid, {}).get("objects") == len(kept) * 2))
        mark = len(self.d.log())
        heavy.send_request(batch_req(heavy, [("gc_collect", dict(generation=2))] * 20000))
        self.d.wait_log(OFFLOAD % sid, start=mark)
        admin = {"Authorization": "Bearer adm"}
        for _ in range(5):
            self.assertEqual(self.listed()[sid]["objects"], len(kept) * 2)
            self.assertGreaterEqual(self.metrics()[k("heapd_sessions")], 2)
            # Its page would read the heap: asked for, never taken while the job runs.
            self.assertEqual(self.d.http_get("/api/session?id=" + sid, headers=admin)[0], 503)
            light.ok("ping")
        # The light session's page is taken meanwhile (the worker's ticks go on).
        lid = light.hello_result.session_id
        self.assertTrue(h.wait_until(
            lambda: self.d.http_get("/api/session?id=" + lid, headers=admin)[0] == 200))
        light.ok("kill_session", session_id=sid)
        heavy.expect_closed()
        self.d.wait_log("session %s destroyed" % sid)
        self.assertTrue(h.wait_until(lambda: sid not in self.listed()))


if __name__ == "__main__":
    h.unittest.main()
