# SPDX-License-Identifier: MIT
"""test_sessions.py: session lifecycle against the real heapd.

Resume after a dropped connection (on the same worker and across workers), goodbye, linger
expiry, wrong or busy resumption, admin list/kill/stats, and worker isolation: a long
collection in one session does not stall a session on another worker.
"""

import threading
import time

import harness as h
from harness import pb


def make_cycle_graph(c, n):
    """n containers in one ring, held by one client reference: collecting walks them all."""
    handles = []
    for start in range(0, n, 2000):
        ops = [h.make_request(i, "alloc", slots=1) for i in range(min(2000, n - start))]
        handles += [r.alloc.handle for r in c.ok("batch", ops=ops).results]
    for start in range(0, n, 2000):
        ops = [h.make_request(i, "set_slot", handle=handles[i], index=0,
                              target=handles[(i + 1) % n])
               for i in range(start, min(start + 2000, n))]
        c.ok("batch", ops=ops)
    return handles


class SessionTest(h.unittest.TestCase):
    def setUp(self):
        self.d = h.Daemon({"admin_tokens": ["adm1n"], "session_linger": "2s"}).start()

    def tearDown(self):
        self.assertEqual(self.d.stop(), 0)

    def resume(self, hr, unix=True):
        c = self.d.connect(unix)
        r = c.hello(session_id=hr.session_id, resume_token=hr.resume_token)
        return c, r

    def test_resume_after_drop(self):
        c = self.d.session()
        hr = c.hello_result
        a = c.alloc(size=8, slots=1, data=b"abc")
        b = c.alloc(size=8)
        c.ok("set_slot", handle=a, index=0, target=b)
        c.close()  # dropped, no goodbye
        self.d.wait_log("session %s detached" % hr.session_id)
        c2, r = self.resume(hr, unix=False)
        self.assertEqual(r.status.code, 0, r.status)
        self.assertTrue(r.hello.resumed)
        self.assertEqual(r.hello.session_id, hr.session_id)
        self.assertEqual(c2.ok("read", handle=a, offset=0, length=3).data, b"abc")
        self.assertEqual(c2.ok("getrefcount", handle=b).value, 2)
        self.assertEqual(c2.ok("heap_stats").objects, 2)
        c2.close()

    def test_resume_moves_to_the_owning_worker(self):
        c = self.d.session()
        hr = c.hello_result
        c.alloc(size=8)
        c.close()
        self.d.wait_log("session %s detached" % hr.session_id)
        # Two idle workers: these land on different ones, so one of them is not the owner.
        x, y = self.d.connect(), self.d.connect()
        r = x.hello(session_id=hr.session_id, resume_token=hr.resume_token)
        self.assertEqual(r.status.code, 0, r.status)
        self.assertEqual(x.ok("heap_stats").objects, 1)
        mark = len(self.d.log())
        x.close()
        self.d.wait_log("session %s detached" % hr.session_id, start=mark)
        r = y.hello(session_id=hr.session_id, resume_token=hr.resume_token)
        self.assertEqual(r.status.code, 0, r.status)
        self.assertEqual(y.ok("heap_stats").objects, 1)
        self.d.wait_log("moving to worker .* to resume session %s" % hr.session_id)
        y.close()

    def test_goodbye_destroys_at_once(self):
        c = self.d.session()
        hr = c.hello_result
        c.alloc(size=8)
        c.call("goodbye")
        c.expect_closed()
        self.d.wait_log("session %s destroyed \\(goodbye\\)" % hr.session_id)
        c2, r = self.resume(hr)
        self.assertEqual(r.status.name, "ENOSESSION")
        self.assertEqual(c2.expect_closed(), [])

    def test_linger_expires(self):
        self.d.stop()
        self.d = h.Daemon({"session_linger": "200ms"}).start()
        c = self.d.session()
        hr = c.hello_result
        c.close()
        self.d.wait_log("session %s destroyed \\(not resumed within session_linger\\)"
                        % hr.session_id, timeout=5)
        c2, r = self.resume(hr)
        self.assertEqual(r.status.name, "ENOSESSION")

    def test_wrong_token_and_busy(self):
        c = self.d.session()
        hr = c.hello_result
        c2 = self.d.connect()
        r = c2.hello(session_id=hr.session_id, resume_token="0" * 32)
        self.assertEqual(r.status.name, "EAUTH")
        c3, r = self.resume(hr)
        self.assertEqual(r.status.name, "EBUSY")
        c.ok("ping")  # the owner is undisturbed

    def test_admin_list_kill_stats(self):
        adm = self.d.session(token="adm1n")
        a = self.d.session()
        b = self.d.session()
        for _ in range(3):
            a.alloc(size=64)
        b.close()
        self.d.wait_log("session %s detached" % b.hello_result.session_id)

        def listing():
            got = {s.id: s for s in adm.ok("list_sessions").sessions}
            sa = got.get(a.hello_result.session_id)
            return got if sa is not None and sa.objects == 3 else None

        got = h.wait_until(listing)
        self.assertIsNotNone(got)
        sa, sb = got[a.hello_result.session_id], got[b.hello_result.session_id]
        self.assertTrue(sa.attached)
        self.assertFalse(sb.attached)
        self.assertGreaterEqual(sa.requests, 3)
        self.assertTrue(sa.peer.startswith("unix:"))
        self.assertGreater(sa.created_unix, 1600000000)
        st = adm.ok("server_stats")
        self.assertEqual((st.sessions, st.sessions_detached), (3, 1))
        self.assertEqual(st.connections, 2)
        self.assertGreaterEqual(st.objects_total, 3)
        self.assertGreater(st.rss_bytes, 0)
        self.assertGreater(st.requests, 3)
        # Kill the detached one and the attached one.
        adm.ok("kill_session", session_id=b.hello_result.session_id)
        adm.ok("kill_session", session_id=a.hello_result.session_id)
        closed = a.expect_closed()
        self.assertEqual([r.status.name for r in closed], ["ENOSESSION"])
        st = adm.ok("server_stats")
        self.assertEqual((st.sessions, st.sessions_detached), (1, 0))
        _, r = self.resume(b.hello_result)
        self.assertEqual(r.status.name, "ENOSESSION")

    def test_admin_kills_itself(self):
        adm = self.d.session(token="adm1n")
        r = adm.call("kill_session", session_id=adm.hello_result.session_id)
        self.assertEqual(r.status.code, 0)
        self.assertEqual([x.status.name for x in adm.expect_closed()], ["ENOSESSION"])

    def test_sessions_are_isolated(self):
        a = self.d.session()
        b = self.d.session()
        ha = a.alloc(size=8)
        self.assertEqual(b.call("decref", handle=ha).status.name, "ENOOBJ")
        self.assertEqual(b.ok("heap_stats").objects, 0)
        self.assertEqual(a.ok("getrefcount", handle=ha).value, 1)

    def test_long_collection_does_not_stall_other_workers(self):
        a, b = self.d.session(), self.d.session()
        self.assertNotEqual(worker_of(self.d, a), worker_of(self.d, b))
        make_cycle_graph(a, 50000)
        a.ok("gc_disable")
        # Hundreds of pipelined full collections keep a's worker busy for a while; b, on the
        # other worker, must keep answering at once meanwhile.
        reqs = [a.req("gc_collect") for _ in range(300)]
        t0 = time.monotonic()
        a.send_raw(b"".join(h.frame(pb.ClientFrame(request=r).SerializeToString())
                            for r in reqs))
        pings = []
        done = threading.Event()

        def pinger():
            while not done.is_set():
                t = time.monotonic()
                b.ok("ping")
                pings.append(time.monotonic() - t)

        th = threading.Thread(target=pinger)
        th.start()
        for _ in reqs:
            self.assertEqual(a.recv_response().status.code, 0)
        busy = time.monotonic() - t0
        done.set()
        th.join()
        self.assertGreater(busy, 0.1, "the collections were too quick to tell")
        self.assertGreater(len(pings), 5)
        # A stalled ping would wait for the whole run of collections.
        self.assertLess(max(pings), busy / 3,
                        "ping %.1f ms while a's worker was busy %.1f ms"
                        % (max(pings) * 1e3, busy * 1e3))


def worker_of(d, client):
    """The worker a client's connection was accepted on, from heapd's debug log."""
    sid = client.hello_result.session_id
    created = d.wait_log("session %s created" % sid)
    peer = created.split()[2].rstrip(":")
    line = d.wait_log(peer + ": accepted on .* to worker")
    return line.rsplit(" ", 1)[1]


if __name__ == "__main__":
    h.main()
