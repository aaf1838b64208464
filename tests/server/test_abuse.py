# SPDX-License-Identifier: MIT
"""test_abuse.py: every request of issue 9 (tests/server/abuse.py) against one daemon, one after
the other, as one hostile client would send them all; then a fresh session must be served as
usual, and the server's peak resident set must have stayed within what its limits allow.

test_bounds.py asserts each bound on a daemon of its own; this checks that they hold together:
that no attack leaves the server worse for the next (a lockout that outlives its
connections, memory never given back, a table left full). In a sanitizer build the RSS bound
is not checked (ASan's quarantine keeps what heapd frees).
"""

import os

import harness as h

import abuse

MIB = 1 << 20

RSS_CHECKS = not os.environ.get("HEAPD_SANITIZED")

# Small limits, so that every attack reaches them quickly: a session may hold 16 MiB, all of
# them 48 MiB. An attacker's sessions end with their connections (session_linger 0), so each
# attack must leave the server's charges as it found them for the next to run at all.
CONFIG = {
    "session_linger": "0s",
    "max_connections": 48, "max_connections_per_ip": 24, "hello_timeout": "1s",
    "session_max_bytes": "16MiB", "max_memory": "48MiB", "output_buffer_limit": "64KiB",
    "max_frame_bytes": "8MiB", "admin_tokens": ["adm1n"], "http": ["127.0.0.1:0"],
    "log_level": "info",
}


class AbuseTest(h.unittest.TestCase):
    @staticmethod
    def served(d):
        """Whether a new connection says hello and is served."""
        c = h.Client(d.unix_addr)
        try:
            return c.hello().status.code == 0
        except (h.Closed, OSError):
            return False
        finally:
            c.close()

    def test_all_attacks_then_a_fresh_session(self):
        d = h.Daemon(dict(CONFIG)).start()
        self.addCleanup(d.stop)
        abuse.reset_peak(d.proc.pid)
        before = abuse.rss(d.proc.pid)
        results = {}
        results["1"] = abuse.attack_1(d)
        results["2"] = abuse.attack_2(d, snapshots=20000)
        results["3"] = abuse.attack_3(d, weakrefs=10 ** 6)
        results["4"] = abuse.attack_4(d, conns=30, hold=0.5)
        results["5"] = abuse.attack_5(d, limit_bytes=16 * MIB)
        results["7"] = abuse.attack_7(d, n=20000)
        results["8_labels"] = abuse.attack_8_labels(d, n=20000)
        results["8_cursors"] = abuse.attack_8_cursors(d, n=50000)
        results["8_trace"] = abuse.attack_8_trace(d, pairs=100000)
        results["9"] = abuse.attack_9(d, n=66000)
        results["10_nul"] = abuse.attack_10_nul(d)
        results["10_rejections"] = abuse.attack_10_rejections(d, extra=40)
        # The connections it held close on the server's time: until then new ones are refused.
        self.assertTrue(h.wait_until(lambda: self.served(d), 10), "still refused")
        results["10_fallback"] = abuse.attack_10_fallback(d, mib=12)
        peak = abuse.peak(d.proc.pid)

        # Each attack met its bound.
        self.assertEqual(results["1"]["status"], "ERANGE")
        self.assertEqual(results["2"]["refused"], "ELIMIT")
        self.assertEqual(results["3"]["refused"], "ELIMIT")
        self.assertEqual(results["4"]["client"], "OK")
        self.assertEqual(results["5"]["refused"], "ELIMIT")
        self.assertEqual((results["7"]["events"], results["7"]["connection_alive"]),
                         (20000, True))
        self.assertEqual(results["9"]["new_tag"], "OK")
        self.assertEqual(results["10_nul"], {"token": "EINVAL", "tag": "EINVAL"})
        self.assertEqual(results["10_rejections"]["other"], [])

        # Then a fresh session is served as usual: objects, slots, a collection, a trace.
        c = d.session(token="adm1n")
        a = c.alloc(size=64, slots=1)
        b = c.alloc(size=64, slots=1)
        c.ok("set_slot", handle=a, index=0, target=b)
        c.ok("set_slot", handle=b, index=0, target=a)
        c.ok("write", handle=a, offset=0, data=b"fresh")
        self.assertEqual(c.ok("read", handle=a, offset=0, length=5).data, b"fresh")
        c.ok("decref", handle=a)
        c.ok("decref", handle=b)
        self.assertEqual(c.ok("gc_collect", generation=2).value, 2)
        c.ok("trace_start")
        c.alloc(size=8, tag="after")
        self.assertEqual(c.ok("heap_stats").objects, 1)
        ch = c.ok("heap_charges")
        self.assertLess(ch.total, MIB)
        # Nothing the attacks held is still charged: their sessions are gone (a large heap
        # is freed on the thread pool, its charge falls once that is done).
        self.assertTrue(h.wait_until(lambda: c.ok("server_stats").charged_bytes < 4 * MIB, 20),
                        c.ok("server_stats").charged_bytes)
        self.assertEqual(d.http_get("/readyz")[0], 200)
        if RSS_CHECKS:
            # Never more than the cap allows: max_memory, the transient memory of a frame
            # being answered (a few times max_frame_bytes) and the daemon's own.
            self.assertLess(peak - before, 2 * 48 * MIB + 32 * MIB, results)


if __name__ == "__main__":
    h.main()
