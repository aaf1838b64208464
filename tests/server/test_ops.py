# SPDX-License-Identifier: MIT
"""test_ops.py: every request of the protocol against the real heapd, pipelining, batch, events.

One daemon serves the whole module; each test opens its own session. test_every_operation
checks that the requests used in this module cover every op of heapd.proto.
"""

import socket

import harness as h
from harness import pb

USED_OPS = set()


class Recording(h.Client):
    """A client that remembers which ops it sent."""

    def req(self, op, **fields):
        USED_OPS.add(op)
        return super().req(op, **fields)


def session_op(c, session_id, op):
    """Sends op (a Request) inside a session_op to session_id; returns the response."""
    rq = c.req("session_op", session_id=session_id)
    rq.session_op.op.CopyFrom(op)
    c.send_request(rq)
    resp = c.recv_response()
    assert resp.id == rq.id
    return resp


def session(daemon, **hello):
    c = Recording(daemon.unix_addr)
    daemon.clients.append(c)
    r = c.hello(**hello)
    assert r.status.code == 0, r.status
    return c


class OpsTest(h.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = h.Daemon({"admin_tokens": ["adm1n"]}).start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def setUp(self):
        self.c = session(self.d)

    def tearDown(self):
        self.c.close()

    # -- objects -------------------------------------------------------------------------------

    def test_objects(self):
        c = self.c
        a = c.alloc(size=32, slots=2, tag="Node", site="test.py:1", data=b"hello")
        b = c.alloc(size=8)
        self.assertNotEqual(a, 0)
        self.assertEqual(c.ok("read", handle=a, offset=0, length=5).data, b"hello")
        c.ok("write", handle=a, offset=5, data=b" world")
        self.assertEqual(c.ok("read", handle=a, offset=0, length=11).data, b"hello world")
        self.assertEqual(c.call("read", handle=a, offset=30, length=8).status.name, "ERANGE")
        c.ok("set_slot", handle=a, index=0, target=b)
        got = c.ok("get_slot", handle=a, index=0).handle
        self.assertEqual(got & 0xFFFFFFFF, b & 0xFFFFFFFF)
        # b: one client ref from alloc, one from get_slot, one from a's slot.
        self.assertEqual(c.ok("getrefcount", handle=b).value, 3)
        c.ok("decref", handle=got)
        c.ok("incref", handle=a, n=2)
        info = c.ok("obj_info", handle=a)
        self.assertEqual((info.client_refs, info.size, info.slots, info.tag, info.site),
                         (3, 32, 2, "Node", "test.py:1"))
        self.assertTrue(info.tracked)
        self.assertGreaterEqual(c.ok("getsizeof", handle=a).value, 32)
        c.ok("decref", handle=a, n=3)
        self.assertEqual(c.call("obj_info", handle=a).status.name, "ENOOBJ")
        c.ok("decref", handle=b)

    def test_unknown_handle_and_bad_argument_keep_the_connection(self):
        c = self.c
        a = c.alloc(size=8)
        self.assertEqual(c.call("decref", handle=0xDEAD00000001).status.name, "ENOOBJ")
        self.assertEqual(c.call("alloc", size=8, slots=70000).status.name, "EINVAL")
        self.assertEqual(c.call("decref", handle=a, n=5).status.name, "EREFS")
        self.assertEqual(c.ok("heap_stats").objects, 1)
        c.ok("ping")

    # -- the collector -------------------------------------------------------------------------

    def test_gc(self):
        c = self.c
        self.assertTrue(c.ok("gc_isenabled").value)
        c.ok("gc_disable")
        self.assertFalse(c.ok("gc_isenabled").value)
        c.ok("gc_set_threshold", threshold=[500, 5, 5])
        self.assertEqual(list(c.ok("gc_get_threshold").threshold), [500, 5, 5])
        # A two-object cycle without client references is garbage.
        x, y = c.alloc(slots=1), c.alloc(slots=1)
        c.ok("set_slot", handle=x, index=0, target=y)
        c.ok("set_slot", handle=y, index=0, target=x)
        self.assertEqual(len(c.ok("gc_get_count").count), 3)
        self.assertTrue(c.ok("gc_is_tracked", handle=x).value)
        refs = c.ok("gc_get_referrers", handles=[x], borrow=True).handles
        self.assertEqual([r & 0xFFFFFFFF for r in refs], [y & 0xFFFFFFFF])
        refs = c.ok("gc_get_referents", handles=[x], borrow=True).handles
        self.assertEqual([r & 0xFFFFFFFF for r in refs], [y & 0xFFFFFFFF])
        page = c.ok("gc_get_objects", generation=0, max=1, borrow=True)
        self.assertEqual(len(page.handles), 1)
        if page.next_cursor:
            c.ok("gc_close_cursor", cursor=page.next_cursor)
        c.ok("decref", handle=x)
        c.ok("decref", handle=y)
        self.assertEqual(c.ok("gc_collect").value, 2)
        self.assertEqual(c.ok("gc_collect", generation=0).value, 0)
        stats = c.ok("gc_get_stats").generations
        self.assertEqual(len(stats), 3)
        self.assertGreaterEqual(stats[2].collected, 2)
        # DEBUG_SAVEALL keeps garbage in gc.garbage.
        c.ok("gc_set_debug", flags=32)
        self.assertEqual(c.ok("gc_get_debug").value, 32)
        x, y = c.alloc(slots=1), c.alloc(slots=1)
        c.ok("set_slot", handle=x, index=0, target=y)
        c.ok("set_slot", handle=y, index=0, target=x)
        c.ok("decref", handle=x)
        c.ok("decref", handle=y)
        c.ok("gc_collect")
        self.assertEqual(c.ok("gc_garbage", borrow=True).total, 2)
        c.ok("gc_garbage_clear")
        self.assertEqual(c.ok("gc_garbage").total, 0)
        c.ok("gc_set_debug", flags=0)
        c.ok("gc_collect")  # the cleared garbage is a cycle still: collect it for real
        keep = c.alloc(slots=1)
        c.ok("gc_freeze")
        self.assertEqual(c.ok("gc_get_freeze_count").value, 1)
        c.ok("gc_unfreeze")
        self.assertEqual(c.ok("gc_get_freeze_count").value, 0)
        c.ok("decref", handle=keep)
        c.ok("gc_enable")
        # The collector's mode (heapd's own; test_gcmode.py has its behaviour).
        self.assertEqual(c.ok("gc_get_mode").mode, pb.GENERATIONAL)
        m = c.ok("gc_set_mode", mode=pb.INCREMENTAL, increment_objects=100)
        self.assertEqual((m.mode, m.increment_objects, m.phase), (pb.INCREMENTAL, 100, 0))
        self.assertEqual(c.ok("gc_set_mode", mode=pb.GENERATIONAL).mode, pb.GENERATIONAL)

    # -- weak references -----------------------------------------------------------------------

    def test_weakrefs(self):
        c = self.c
        o = c.alloc(size=8)
        w = c.ok("weakref_new", handle=o).weak
        got = c.ok("weakref_get", weak=w).handle
        self.assertEqual(got & 0xFFFFFFFF, o & 0xFFFFFFFF)
        c.ok("decref", handle=got)
        c.ok("decref", handle=o)
        self.assertEqual(c.ok("weakref_get", weak=w).handle, 0)
        c.ok("weakref_free", weak=w)
        self.assertEqual(c.call("weakref_free", weak=w).status.name, "ENOWEAK")

    # -- tracing -------------------------------------------------------------------------------

    def test_tracing(self):
        c = self.c
        self.assertEqual(c.call("trace_snapshot").status.name, "ENOTRACE")
        c.ok("trace_start")
        self.assertTrue(c.ok("trace_is_tracing").value)
        s1 = c.ok("trace_snapshot").snapshot
        objs = [c.alloc(size=64, site="a.py:1", tag="A") for _ in range(3)]
        objs.append(c.alloc(size=16, site="b.py:2", tag="B"))
        mem = c.ok("trace_get_traced_memory")
        self.assertGreater(mem.current, 0)
        self.assertGreaterEqual(mem.peak, mem.current)
        s2 = c.ok("trace_snapshot").snapshot
        st = c.ok("trace_statistics", snapshot=s2, group=pb.BY_SITE).stats
        self.assertEqual(st[0].key, "a.py:1")
        self.assertEqual(st[0].count, 3)
        # trace_top: the same, of the live traces, and no snapshot taken for it.
        top = c.ok("trace_top", group=pb.BY_SITE)
        self.assertEqual([(s.key, s.count, s.bytes) for s in top.stats],
                         [(s.key, s.count, s.bytes) for s in st])
        self.assertEqual(len(c.ok("trace_top", group=pb.BY_TAG, limit=1).stats), 1)
        self.assertEqual(c.call("trace_top", group=9).status.name, "EINVAL")
        diff = c.ok("trace_compare", snapshot=s2, old_snapshot=s1, group=pb.BY_TAG).stats
        self.assertEqual(diff[0].key, "A")
        self.assertEqual(diff[0].count_diff, 3)
        # The snapshot's traces: one entry per (site, tag, size), with its count.
        tr = c.ok("trace_snapshot_traces", snapshot=s2)
        self.assertEqual(tr.total, 2)
        got = sorted((e.site, e.tag, e.count) for e in tr.traces)
        self.assertEqual(got, [("a.py:1", "A", 3), ("b.py:2", "B", 1)])
        sizes = {e.tag: e.size for e in tr.traces}
        self.assertEqual(sizes["A"] * 3 + sizes["B"], mem.current)
        page = c.ok("trace_snapshot_traces", snapshot=s2, start=1, max=5)
        self.assertEqual((len(page.traces), page.total), (1, 2))
        self.assertEqual(c.call("trace_snapshot_traces", snapshot=s2, start=3).status.name,
                         "ERANGE")
        self.assertEqual(c.call("trace_snapshot_traces", snapshot=999).status.name, "ENOSNAP")
        self.assertGreater(c.ok("trace_get_tracemalloc_memory").value, 0)
        # A site is a traceback: several frames, one per line, up to 4096 bytes.
        tb = "\n".join(f"mod{i}.py:{i}" for i in range(20))
        deep = c.alloc(site=tb, tag="T")
        info = c.ok("obj_info", handle=deep)
        self.assertEqual((info.site, info.traced), (tb, True))
        c.ok("decref", handle=deep)
        r = c.call("alloc", site="x" * 4097)
        self.assertEqual(r.status.name, "EINVAL")
        c.ok("trace_snapshot_free", snapshot=s1)
        c.ok("trace_snapshot_free", snapshot=s2)
        c.ok("trace_reset_peak")
        c.ok("trace_clear")
        c.ok("trace_stop")
        self.assertFalse(c.ok("trace_is_tracing").value)
        for o in objs:
            c.ok("decref", handle=o)

    # -- the census ----------------------------------------------------------------------------

    def test_census(self):
        c = self.c
        objs = [c.alloc(size=500, tag="Big", site="big.py:1") for _ in range(2)]
        objs += [c.alloc(size=8, slots=1, tag="Small", site="small.py:%d" % i) for i in range(5)]
        objs.append(c.alloc(size=4))
        by_bytes = c.ok("heap_census", group=pb.BY_TAG).stats
        self.assertEqual([s.key for s in by_bytes], ["Big", "Small", ""])
        self.assertEqual([s.count for s in by_bytes], [2, 5, 1])
        self.assertEqual(by_bytes[0].bytes, 2 * (24 + 8 + 500))
        by_count = c.ok("heap_census", group=pb.BY_TAG, order=pb.BY_COUNT, limit=2)
        self.assertEqual([s.key for s in by_count.stats], ["Small", "Big"])
        self.assertEqual(by_count.total, 3)
        sites = c.ok("heap_census", group=pb.BY_SITE, order=pb.BY_COUNT).stats
        self.assertEqual((sites[0].key, sites[0].count), ("big.py:1", 2))
        self.assertEqual(c.call("heap_census", group=5).status.name, "EINVAL")
        self.assertEqual(c.call("heap_census", order=5).status.name, "EINVAL")
        for o in objs:
            c.ok("decref", handle=o)
        self.assertEqual(list(c.ok("heap_census").stats), [])

    # -- another session, for an admin ---------------------------------------------------------

    def test_inspect_another_session(self):
        victim = session(self.d, client_name="victim")
        vid = victim.hello_result.session_id
        o = victim.alloc(size=100, tag="Node", site="v.py:1")
        victim.ok("set_events", mask=0x18)  # gc_start, gc_stop
        adm = session(self.d, token="adm1n")
        r = adm.ok("session_report", session_id=vid, top=5)
        self.assertEqual((r.session.id, r.session.client_name), (vid, "victim"))
        self.assertEqual(r.session.last_op, "set_events")
        self.assertEqual(r.heap.objects, 1)
        self.assertEqual([(s.key, s.count) for s in r.tags_by_bytes], [("Node", 1)])
        self.assertEqual(list(r.gc_threshold), [700, 10, 10])
        # session_op: the op's own response, run in the victim's heap.
        op = pb.Request(id=77, gc_collect=pb.GcCollect())
        r = session_op(adm, vid, op)
        self.assertEqual(r.status.name, "OK")
        inner = r.session_op
        self.assertEqual((inner.id, inner.status.name), (77, "OK"))
        self.assertTrue(inner.HasField("gc_collect"))
        # ... whose events go to the victim's client.
        victim.ok("ping")
        self.assertEqual([e.WhichOneof("kind") for e in victim.events], ["gc_start", "gc_stop"])
        op = pb.Request(id=78, alloc=pb.Alloc(size=1))
        self.assertEqual(session_op(adm, vid, op).status.name, "EPERM")
        self.assertEqual(adm.call("session_report", session_id="nope").status.name, "ENOSESSION")
        self.assertEqual(self.c.call("session_report", session_id=vid).status.name, "EPERM")
        victim.ok("decref", handle=o)
        adm.close()
        victim.close()

    # -- session requests ----------------------------------------------------------------------

    def test_ping_stats_goodbye(self):
        c = self.c
        self.assertGreater(c.ok("ping").server_time_unix_ns, 0)
        c.alloc(size=8)
        st = c.ok("heap_stats")
        self.assertEqual(st.objects, 1)
        ch = c.ok("heap_charges")
        kinds = [f.name for f in ch.DESCRIPTOR.fields][:10]
        self.assertEqual(ch.total, sum(getattr(ch, k) for k in kinds))
        self.assertGreaterEqual(ch.objects, 16384)  # the pool of the object
        self.assertGreaterEqual(ch.server_charged, ch.total)
        r = c.call("goodbye")
        self.assertEqual(r.status.code, 0)
        self.assertEqual(c.expect_closed(), [])

    def test_admin_requests(self):
        adm = session(self.d, token="adm1n")
        self.assertTrue(adm.hello_result.admin)
        st = adm.ok("server_stats")
        self.assertGreaterEqual(st.sessions, 2)
        ids = [s.id for s in adm.ok("list_sessions").sessions]
        self.assertIn(self.c.hello_result.session_id, ids)
        victim = session(self.d)
        adm.ok("kill_session", session_id=victim.hello_result.session_id)
        got = victim.expect_closed()
        self.assertTrue(all(r.status.name == "ENOSESSION" for r in got))
        self.assertEqual(adm.call("kill_session", session_id="nope").status.name, "ENOSESSION")
        # Without a data_dir there is nowhere to save (test_persist.py saves for real).
        r = adm.call("save")
        self.assertEqual(r.status.name, "EIO")
        self.assertIn("data_dir", r.status.message)
        # A plain session may not.
        self.assertEqual(self.c.call("server_stats").status.name, "EPERM")
        self.assertEqual(self.c.call("save").status.name, "EPERM")
        # drain and its cancel (test_cluster.py has the rest: redirects, /readyz).
        self.assertEqual(self.c.call("drain").status.name, "EPERM")
        self.assertTrue(adm.ok("drain").draining)
        self.assertFalse(adm.ok("drain", cancel=True).draining)
        # server_info, the slowlog and monitor (test_observe.py has the details).
        info = adm.ok("server_info", section="clients")
        self.assertEqual([s.name for s in info.sections], ["clients"])
        self.assertGreaterEqual(adm.ok("slowlog_get").total, 0)
        adm.ok("slowlog_reset")
        self.assertEqual(adm.call("monitor").status.name, "OK")
        self.c.ok("ping")
        f = adm.recv_frame()
        self.assertEqual((f.WhichOneof("kind"), f.monitor.op), ("monitor", "ping"))
        adm.close()

    # -- pipelining and batches ----------------------------------------------------------------

    def test_pipelining(self):
        c = self.c
        reqs = [c.req("alloc", size=16) for _ in range(500)] + [c.req("heap_stats")]
        c.send_raw(b"".join(h.frame(pb.ClientFrame(request=r).SerializeToString())
                            for r in reqs))
        resps = [c.recv_response() for _ in reqs]
        self.assertEqual([r.id for r in resps], [r.id for r in reqs])
        self.assertTrue(all(r.status.code == 0 for r in resps))
        self.assertEqual(resps[-1].heap_stats.objects, 500)
        handles = [r.alloc.handle for r in resps[:-1]]
        reqs = [c.req("decref", handle=x) for x in handles]
        c.send_raw(b"".join(h.frame(pb.ClientFrame(request=r).SerializeToString())
                            for r in reqs))
        self.assertTrue(all(c.recv_response().status.code == 0 for _ in reqs))
        self.assertEqual(c.ok("heap_stats").objects, 0)

    def test_batch(self):
        c = self.c
        ops = [h.make_request(i, "alloc", size=8, slots=1) for i in range(1, 4)]
        ops.append(h.make_request(4, "decref", handle=12345))
        ops.append(h.make_request(5, "ping"))
        res = c.ok("batch", ops=ops).results
        self.assertEqual(len(res), 5)
        self.assertEqual([r.status.code == 0 for r in res], [True, True, True, False, True])
        self.assertEqual(res[3].status.name, "ENOOBJ")
        self.assertEqual(c.ok("heap_stats").objects, 3)
        bad = c.ok("batch", ops=[h.make_request(1, "goodbye")]).results
        self.assertEqual(bad[0].status.name, "EINVAL")
        c.ok("ping")  # the session is still there

    # -- events --------------------------------------------------------------------------------

    def test_events_follow_their_response(self):
        c = self.c
        mask = (1 << pb.FINALIZED) | (1 << pb.WEAKREF_CLEARED) | (1 << pb.GC_START) | (
            1 << pb.GC_STOP)
        self.assertEqual(c.ok("set_events", mask=mask).mask, mask)
        o = c.alloc(size=8, tag="Fin", flags=pb.OBJ_FINALIZER)
        # decref's response comes first, then the FINALIZED event, then ping's response.
        d = c.send("decref", handle=o)
        p = c.send("ping")
        f1 = c.recv_frame()
        f2 = c.recv_frame()
        f3 = c.recv_frame()
        self.assertEqual((f1.WhichOneof("kind"), f1.response.id), ("response", d))
        self.assertEqual(f2.event.WhichOneof("kind"), "finalized")
        self.assertEqual(f2.event.finalized.tag, "Fin")
        self.assertEqual((f3.WhichOneof("kind"), f3.response.id), ("response", p))
        # A cycle holding a weakly referenced object: the collection reports start, the
        # cleared weak reference and stop, all after the collect response.
        x, y = c.alloc(slots=1), c.alloc(slots=1)
        c.ok("set_slot", handle=x, index=0, target=y)
        c.ok("set_slot", handle=y, index=0, target=x)
        w = c.ok("weakref_new", handle=x, notify=True).weak
        c.ok("decref", handle=x)
        c.ok("decref", handle=y)
        c.events.clear()
        r = c.call("gc_collect")
        self.assertEqual(r.status.code, 0)
        self.assertEqual(c.events, [])
        c.ok("ping")
        kinds = [e.WhichOneof("kind") for e in c.events]
        self.assertEqual(kinds[0], "gc_start")
        self.assertIn("weakref_cleared", kinds)
        self.assertEqual(kinds[-1], "gc_stop")
        cleared = [e.weakref_cleared.weak for e in c.events if e.HasField("weakref_cleared")]
        self.assertEqual(cleared, [w])

    def test_tcp_too(self):
        with h.Client(self.d.tcp_addr) as t:
            self.assertEqual(t.hello().status.code, 0)
            t.alloc(size=8)
            self.assertEqual(t.ok("heap_stats").objects, 1)

    def test_zz_every_operation(self):
        """Runs last (alphabetically): the tests above covered every op of the protocol."""
        all_ops = {f.name for f in pb.Request.DESCRIPTOR.oneofs_by_name["op"].fields}
        batched = {"alloc", "decref", "ping", "goodbye"}
        self.assertEqual(sorted(all_ops - USED_OPS - batched), [])


if __name__ == "__main__":
    h.main()
