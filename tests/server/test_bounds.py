# SPDX-License-Identifier: MIT
"""test_bounds.py: one regression test per finding of issue 9 ("Bound everything a client can
make the server hold"), each the request that reproduced it (tests/server/abuse.py) and the
bound that now holds, the server's resident set read from /proc against what it charged.

Finding 6 (work per frame) belongs to issue 11 and is not here. The charges are read with
heap_charges (what max_bytes bounds). In a sanitizer build
(HEAPD_SANITIZED, set by ctest) RSS says nothing about what heapd holds (ASan keeps freed
memory in quarantine), so the RSS bounds are not checked there; everything else is.
"""

import os

import harness as h

import abuse

MIB = 1 << 20


RSS_CHECKS = not os.environ.get("HEAPD_SANITIZED")


class BoundsTest(h.unittest.TestCase):
    def assertRSS(self, grew, bound, what=None):
        """RSS grew by at most bound (not checked in a sanitizer build)."""
        if RSS_CHECKS:
            self.assertLess(grew, bound, what)

    def daemon(self, **cfg):
        cfg.setdefault("log_level", "info")
        d = h.Daemon(cfg).start()
        self.addCleanup(d.stop)
        return d

    def test_01_results_bounded_before_they_are_built(self):
        # One handle repeated 4096 times, an object of 4096 slots: 16.7M handles (134 MB)
        # asked for by a 32 KiB request. The list stops at what fits in max_read_bytes.
        d = self.daemon(max_frame_bytes="1MiB")
        r = abuse.attack_1(d)
        self.assertEqual(r["status"], "ERANGE")
        self.assertEqual((r["distinct_status"], r["distinct"]), ("OK", 1))
        self.assertRSS(r["rss_peak"] - r["rss_before"], 3 * r["max_read_bytes"] + 4 * MIB, r)
        # In a batch: 100 such requests hold no more than one does.
        c = d.session()
        o = c.alloc(slots=1000)
        t = c.alloc(size=8)
        abuse.send_batch(c, [abuse.request(k, "set_slot", abuse.field_fixed64(1, o) +
                                           abuse.field_varint(2, k) + abuse.field_fixed64(3, t))
                             for k in range(1000)])
        body = abuse.field_bytes(1, h.struct.pack("<1000Q", *([o] * 1000))) + \
            abuse.field_varint(2, 1)
        with abuse.Measure(d) as m:
            res = abuse.send_batch(c, [abuse.request(k, "gc_get_referents", body)
                                       for k in range(100)])
        self.assertEqual({x.status.name for x in res.batch.results}, {"ERANGE"})
        self.assertRSS(m.grew(), 3 * r["max_read_bytes"] + 4 * MIB)
        self.assertEqual(c.ok("getrefcount", handle=t).value, 1001)

    def test_02_trace_snapshots_are_charged(self):
        # 2,000 distinct (site, tag) pairs live, then snapshots in batches of 1,000: each copies
        # them all. They are charged as they are taken, so max_bytes refuses one at last, and
        # the server holds what it charged.
        d = self.daemon(session_max_bytes="16MiB")
        r = abuse.attack_2(d, snapshots=100000)
        self.assertEqual(r["refused"], "ELIMIT", r)
        self.assertLessEqual(r["charged"], 16 * MIB + 2 * MIB, r)  # + output, never refused
        self.assertGreater(r["snapshots"], 100)
        self.assertRSS(r["rss_peak"] - r["rss_before"], 2 * r["charged"] + 16 * MIB, r)

    def test_03_weak_references_are_charged(self):
        # weakref_new on one object until refused: the entries and their map are charged.
        d = self.daemon(session_max_bytes="8MiB")
        r = abuse.attack_3(d, weakrefs=10 ** 7)
        self.assertEqual(r["refused"], "ELIMIT", r)
        self.assertGreater(r["weakrefs"], 100000)
        self.assertLessEqual(r["charged"], 8 * MIB + 2 * MIB, r)
        self.assertRSS(r["rss_peak"] - r["rss_before"], 2 * r["charged"] + 16 * MIB, r)

    def test_05_fragmentation_is_charged(self):
        # Each size class filled to the limit, then all but one block per pool freed: the
        # pools stay pinned, and stay charged, so the next class is refused instead of pinning
        # pools of its own. RSS stays within a small multiple of max_bytes.
        d = self.daemon(session_max_bytes="16MiB")
        r = abuse.attack_5(d, limit_bytes=16 * MIB)
        self.assertEqual(r["refused"], "ELIMIT", r)
        self.assertLess(r["object_bytes"], r["charged"] / 10, r)  # fragmented, yet charged
        # The pools are charged up to max_bytes and no further. The total also holds the
        # connection's buffers, never refused (bounded by their own limits) and, after a
        # burst of pipelined allocs, as large as the input the client sent ahead: how much
        # depends on how the reads fell, so the total is not the bound checked.
        self.assertLessEqual(r["charged_objects"], 16 * MIB, r)
        self.assertLessEqual(r["charged_objects"] + r["charged_buffers"], r["charged"], r)
        self.assertRSS(r["rss_peak"] - r["rss_before"], 2 * 16 * MIB + 16 * MIB, r)

    def test_08_tables_cursors_and_queues_are_charged(self):
        # Labels: 65,535 distinct 255-byte tags and sites are charged while they live, and
        # given back (but for their tables) when their objects die.
        d = self.daemon()
        r = abuse.attack_8_labels(d)
        self.assertGreater(r["charged_live"], 2 * 65535 * 256, r)
        self.assertLess(r["charged_after"], r["charged_live"] / 3, r)
        self.assertRSS(r["rss_peak"] - r["rss_before"], 2 * r["charged_live"] + 16 * MIB, r)
        # Cursors: 16 open gc_get_objects walks over 200,000 objects, 8 bytes an entry each.
        r = abuse.attack_8_cursors(d)
        self.assertGreater(r["charged"] - r["charged_before"], 16 * 200000 * 8, r)
        self.assertRSS(r["rss_peak"] - r["rss_before"],
                       2 * (r["charged"] - r["charged_before"]) + 16 * MIB, r)
        # The tracing table: 200,000 distinct (site, tag) pairs.
        r = abuse.attack_8_trace(d)
        c = d.session()
        c.ok("trace_start")
        abuse.allocs(c, [abuse.alloc_body(tag=b"%d" % i) for i in range(20000)])
        self.assertGreater(c.ok("heap_charges").trace, 20000 * 24)
        self.assertRSS(r["rss_peak"] - r["rss_before"], 2 * r["charged"] + 16 * MIB, r)
        # And each of them under a limit: refused with ELIMIT once the session is full.
        d.stop()
        d = self.daemon(session_max_bytes="2MiB")
        c = d.session()
        hs, refused = abuse.allocs(c, [abuse.alloc_body(tag=b"%05d" % i + b"t" * 250)
                                       for i in range(20000)], chunk=5000)
        self.assertEqual(refused, "ELIMIT")
        # (+ what is counted but never refused: output, the replay window of 1 MiB)
        self.assertLessEqual(c.ok("heap_charges").total, 2 * MIB + 2 * MIB)
        c.close()
        c = d.session()
        abuse.allocs(c, [abuse.alloc_body(slots=1)] * 20000)
        r = c.call("gc_get_objects", cursor=0, max=1, borrow=True)
        for _ in range(20):
            r = c.call("gc_get_objects", cursor=0, max=1, borrow=True)
            if r.status.code:
                break
        self.assertEqual(r.status.name, "ELIMIT")

    def test_04_slowloris_before_hello(self):
        # Connections from 127.0.0.2 that send a header and then a byte every 0.2 s. With
        # max_connections_per_ip they get half the slots and a client from 127.0.0.1 is served
        # at once; without it they hold every slot, but only until hello_timeout, counted from
        # accept: the client is served within about that.
        d = self.daemon(max_connections=40, max_connections_per_ip=20, hello_timeout="1s")
        r = abuse.attack_4(d, conns=40, hold=0.5)
        self.assertEqual(r["client"], "OK")
        d.stop()
        d = self.daemon(max_connections=40, max_connections_per_ip=0, hello_timeout="1s")
        t0 = h.time.monotonic()
        r = abuse.attack_4(d, conns=40, hold=5)
        self.assertEqual(r["client"], "OK")
        self.assertLess(h.time.monotonic() - t0, 4)
        self.assertEqual(r["attackers_closed"], r["attackers"])
        d.wait_log("no hello within 1000 ms of connecting")

    def test_07_event_bursts_under_flow_control(self):
        # One decref frees a chain of 50,000 objects with finalizers and 200-byte tags: 11 MB
        # of events against a 64 KiB output buffer. A client that reads gets every one, keeps
        # its connection, and the server never buffers the burst.
        d = self.daemon(output_buffer_limit="64KiB")
        r = abuse.attack_7(d, n=50000)
        self.assertEqual((r["events"], r["connection_alive"], r["dropped"]), (50000, True, 0), r)
        self.assertRSS(r["rss_peak"] - r["rss_before"], 8 * MIB, r)

    def test_09_tag_ids_are_reclaimed(self):
        # 65,536 distinct tags over a session's life, each freed with its object: the ids
        # come back, so the next new tag is served.
        d = self.daemon()
        r = abuse.attack_9(d)
        self.assertIsNone(r["refused"])
        self.assertEqual(r["new_tag"], "OK")

    def test_10_every_refusal_answered_and_summarised(self):
        # 100 connections over max_connections at once: each hears ETOOMANY, none is cut off
        # silently, and the log says so in one line a second.
        d = self.daemon(max_connections=8)
        r = abuse.attack_10_rejections(d, extra=100)
        self.assertEqual((r["etoomany"], r["other"]), (100, []))
        self.assertLessEqual(r["log_lines"], 3)
        d.wait_log("connections rejected in the last second with ETOOMANY")

    def test_10_server_wide_cap(self):
        # max_memory 24 MiB, sessions of 16 MiB: the first fills its quota, the second is
        # stopped by the server's cap, and so is a new session; reads and frees go on,
        # /readyz says 503, and once a session ends the server serves new ones again.
        d = self.daemon(max_memory="24MiB", session_max_bytes="16MiB", http=["127.0.0.1:0"])
        r = abuse.attack_10_max_memory(d)
        self.assertIn("max_bytes", r["refusals"][0][1])
        self.assertIn("max_memory", r["refusals"][1][1])
        # + what is counted, never refused: output, the replay windows (1 MiB a session)
        self.assertLessEqual(r["server_charged"], 24 * MIB + 5 * MIB)
        self.assertEqual(r["max_memory"], 24 * MIB)
        self.assertTrue(r["new_session"].startswith("ELIMIT: max_memory"), r)
        self.assertEqual((r["read_when_full"], r["free_when_full"]), ("OK", "OK"))
        self.assertEqual((r["readyz_full"], r["readyz_after"]), (503, 200))
        self.assertEqual((r["new_session_after"], r["alloc_after"]), ("OK", "OK"))
        # The default is a share of the machine's (or the cgroup's) memory.
        d.stop()
        d = self.daemon()
        c = d.session()
        cap = c.ok("heap_charges").max_memory
        with open("/proc/meminfo") as f:
            total = int(f.readline().split()[1]) * 1024
        self.assertGreater(cap, 0)
        self.assertLessEqual(cap, total * 3 // 4)

    def test_10_rss_falls_back_after_a_peak(self):
        # 200 MiB of objects, then the session ends: the arenas are unmapped, the large
        # blocks freed and malloc trimmed, so RSS comes back near where it was.
        d = self.daemon()
        r = abuse.attack_10_fallback(d)
        self.assertGreater(r["rss_top"], r["rss_before"] + 150 * MIB, r)
        self.assertRSS(r["rss_after"] - r["rss_before"], 32 * MIB, r)

    def test_10_strings_with_nul_are_refused(self):
        # "adm1n\0junk" is not the token "adm1n", and "Node\0junk" is no tag.
        d = self.daemon(admin_tokens=["adm1n"])
        r = abuse.attack_10_nul(d)
        self.assertEqual(r, {"token": "EINVAL", "tag": "EINVAL"})
        d.wait_log("hello refused: EINVAL: a string field holds a NUL byte")
        # A request with one goes nowhere near the engine; the session goes on.
        c = d.session(token="adm1n")
        self.assertEqual(c.ok("heap_stats").objects, 0)


if __name__ == "__main__":
    h.main()
