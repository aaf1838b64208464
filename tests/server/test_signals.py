# SPDX-License-Identifier: MIT
"""test_signals.py: SIGHUP reload and SIGTERM/SIGINT shutdown of the real heapd.

SIGHUP reloads the reloadable settings and keeps the running config when the file has become
invalid (logging why, with file:line:column). SIGTERM and SIGINT stop accepting, finish the
requests already received, close every session and exit 0 within a few seconds.
"""

import os
import signal
import time

import harness as h
from harness import pb


class ReloadTest(h.unittest.TestCase):
    def setUp(self):
        self.d = h.Daemon({"max_sessions": 100}).start()

    def tearDown(self):
        self.assertEqual(self.d.stop(), 0)

    def reload(self, cfg):
        mark = len(self.d.log())
        self.d.write_config(cfg)
        self.d.signal(signal.SIGHUP)
        return mark

    def test_reload_applies_reloadable_settings(self):
        before = self.d.session()
        before.alloc(size=8)
        cfg = dict(self.d.config, tokens=["t0k"], session_max_objects=3, max_sessions=3,
                   log_format="json", gc_threshold=[100, 5, 2], gc_enabled=False)
        mark = self.reload(cfg)
        self.d.wait_log(r"config reloaded from .*: \d+ settings changed", start=mark)
        # Each change is logged (secrets by name only); lines after the reload are JSON.
        self.d.wait_log(r"config reload: session_max_objects: 4000000 -> 3", start=mark)
        self.d.wait_log(r"config reload: tokens changed$", start=mark)
        self.d.wait_log(r'^\{"ts":".*","level":"info","msg":"config reloaded from ', start=mark)
        self.assertFalse(any("t0k" in line for line in self.d.log()))
        # Tokens now required; existing sessions are not cut off.
        c = self.d.connect()
        self.assertEqual(c.hello().status.name, "EAUTH")
        c2 = self.d.session(token="t0k")
        self.assertEqual(c2.hello_result.limits.max_objects, 3)
        # gc defaults apply to new sessions only.
        self.assertEqual(list(c2.ok("gc_get_threshold").threshold), [100, 5, 2])
        self.assertFalse(c2.ok("gc_isenabled").value)
        self.assertEqual(list(before.ok("gc_get_threshold").threshold), [700, 10, 10])
        self.assertTrue(before.ok("gc_isenabled").value)
        # The new object limit applies to the running session too.
        before.alloc(size=8)
        before.alloc(size=8)
        self.assertEqual(before.call("alloc", size=8).status.name, "ELIMIT")
        # max_sessions: 3 sessions exist (c's hello was refused), a fourth is refused.
        self.d.session(token="t0k")
        c3 = self.d.connect()
        self.assertEqual(c3.hello(token="t0k").status.name, "ETOOMANY")

    def test_non_reloadable_setting_is_kept(self):
        cfg = dict(self.d.config, workers=7, log_level="info")
        mark = self.reload(cfg)
        self.d.wait_log("workers changed but takes effect only on restart", start=mark)
        self.d.wait_log("config reloaded", start=mark)
        self.d.session().ok("ping")

    def test_invalid_file_keeps_the_running_config(self):
        mark = self.reload(dict(self.d.config, max_sessions="many"))
        line = self.d.wait_log("config reload failed", start=mark)
        self.assertRegex(line, r"heapd\.yaml:\d+:15: max_sessions: \"many\" is not an integer")
        self.assertIn("keeping the running config", line)
        self.d.session().ok("ping")
        # And a later valid reload still works.
        mark = self.reload(dict(self.d.config, max_connections=50))
        self.d.wait_log("max_connections: 1024 -> 50", start=mark)


class ShutdownTest(h.unittest.TestCase):
    def check_shutdown(self, sig):
        d = h.Daemon().start()
        try:
            a = d.session()
            b = d.session(unix=False)
            b.alloc(size=8)
            detached = d.session()
            detached.close()
            d.wait_log("session %s detached" % detached.hello_result.session_id)
            # Requests already sent are answered before the connection closes.
            reqs = [a.req("alloc", size=64) for _ in range(200)]
            a.send_raw(b"".join(h.frame(pb.ClientFrame(request=r).SerializeToString())
                                for r in reqs))
            first = a.recv_response()
            t0 = time.monotonic()
            d.signal(sig)
            rc = d.wait_exit(10)
            took = time.monotonic() - t0
            self.assertEqual(rc, 0)
            self.assertLess(took, 5)
            # Every request sent before the signal is answered, then the reason, id 0.
            rest = a.expect_closed()
            self.assertEqual(1 + len(rest), len(reqs) + 1)
            self.assertTrue(all(r.status.code == 0 for r in rest[:-1]))
            self.assertEqual((rest[-1].id, rest[-1].status.name), (0, "ESHUTDOWN"))
            self.assertEqual([r.status.name for r in b.expect_closed()], ["ESHUTDOWN"])
            d.wait_log("shutting down")
            d.wait_log("stopped")
            self.assertEqual(len([l for l in d.log() if "destroyed (server stopping)" in l]), 3)
            self.assertFalse(os.path.exists(d.sock_path))
        finally:
            d.stop()

    def test_sigterm(self):
        self.check_shutdown(signal.SIGTERM)

    def test_sigint(self):
        self.check_shutdown(signal.SIGINT)

    def test_sigterm_with_a_client_not_reading(self):
        d = h.Daemon({"output_buffer_limit": "1MiB"}).start()
        try:
            c = d.session()
            o = c.alloc(size=100000)
            reqs = [c.req("read", handle=o, offset=0, length=100000) for _ in range(40)]
            c.send_raw(b"".join(h.frame(pb.ClientFrame(request=r).SerializeToString())
                                for r in reqs))
            d.wait_log("pausing")
            t0 = time.monotonic()
            d.signal(signal.SIGTERM)
            self.assertEqual(d.wait_exit(10), 0)
            self.assertLess(time.monotonic() - t0, 5)
            d.wait_log("output still unsent after")
        finally:
            d.stop()

    def test_new_connections_are_refused_while_stopping(self):
        d = h.Daemon().start()
        try:
            d.signal(signal.SIGTERM)
            self.assertEqual(d.wait_exit(10), 0)
            with self.assertRaises(OSError):
                h.Client(d.tcp_addr, timeout=1)
        finally:
            d.stop()


if __name__ == "__main__":
    h.main()
