# SPDX-License-Identifier: MIT
"""test_http.py: the HTTP server for operators, against the real heapd.

/metrics checked by Prometheus's own promtool and against what the test did to the server
(requests by op, errors by code, refusals by reason, memory, collections, the top-N bound);
/healthz and /readyz (503 while shutting down); and HTTP itself as a client meets it:
keep-alive, pipelining, HEAD, methods other than GET/HEAD, malformed and oversized requests
(400/431, then closed), a body, a slow client (408 after http_timeout), an idle keep-alive
connection closed, and the connection limit (503).
"""

import re
import socket
import subprocess
import time

import signal

import harness as h

PROMTOOL = "/usr/bin/promtool"


def raw(addr, data, timeout=5.0):
    """Sends data on a new connection and reads until the server closes it."""
    s = socket.create_connection(addr, timeout=timeout)
    try:
        s.sendall(data)
        got = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        return got
    finally:
        s.close()


class HttpTest(h.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = h.Daemon({"http": ["127.0.0.1:0"], "tokens": ["user"],
                          "admin_tokens": ["boss"], "metrics_top_sessions": 2,
                          "http_timeout": "500ms", "http_max_connections": 4}).start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def metrics(self):
        status, headers, body = self.d.http_get("/metrics")
        self.assertEqual(status, 200)
        self.assertEqual(headers["Content-Type"], "text/plain; version=0.0.4; charset=utf-8")
        return body.decode()

    def value(self, name, **labels):
        key = (name, frozenset(labels.items()))
        return h.parse_metrics(self.metrics()).get(key)

    def test_promtool_accepts_the_exposition(self):
        s = self.d.session(token="user")
        for _ in range(3):
            s.alloc(size=100, slots=1, tag="Node")
        s.ok("gc_collect")
        text = self.metrics()
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout.decode() + p.stderr.decode())
        self.assertEqual(p.stdout + p.stderr, b"", "promtool's lint found something")
        # Every family has HELP and TYPE, a heapd_ name, and counters end in _total.
        families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
        helps = set(re.findall(r"^# HELP (\S+) ", text, re.M))
        self.assertEqual(set(families), helps)
        for name, kind in families.items():
            self.assertTrue(name.startswith("heapd_"), name)
            if kind == "counter":
                self.assertTrue(name.endswith("_total"), name)
        for name in ("heapd_uptime_seconds", "heapd_sessions", "heapd_requests_total",
                     "heapd_errors_total", "heapd_gc_pause_seconds",
                     "heapd_memory_object_bytes", "heapd_worker_loop_lag_seconds",
                     "heapd_connections_rejected_total", "heapd_memory_limit_bytes"):
            self.assertIn(name, families)
        s.call("goodbye")

    def test_the_deployment_guide_lists_every_family(self):
        guide = h.read_file(h.os.path.join(h.os.environ["HEAPD_SOURCE_DIR"], "docs",
                                           "DEPLOYMENT.md"))
        section = guide.split("## 10. Observability", 1)[1].split("\n## ", 1)[0]
        documented = {}
        for row in re.findall(r"^\| (`heapd_.*?) \| (\w+) \|", section, re.M):
            for name in re.findall(r"`(heapd_\w+)`", row[0]):
                documented[name] = row[1]
        families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", self.metrics(), re.M))
        self.assertEqual(documented, families)

    def test_requests_by_op_and_errors_by_code(self):
        before = h.parse_metrics(self.metrics())
        s = self.d.session(token="user")
        for _ in range(5):
            s.alloc(size=8)
        self.assertEqual(s.call("decref", handle=0x7000000a1).status.name, "ENOOBJ")
        after = h.parse_metrics(self.metrics())
        k = lambda n, **l: (n, frozenset(l.items()))
        self.assertEqual(after[k("heapd_requests_total", op="alloc")]
                         - before[k("heapd_requests_total", op="alloc")], 5)
        self.assertEqual(after[k("heapd_errors_total", code="ENOOBJ")]
                         - before[k("heapd_errors_total", code="ENOOBJ")], 1)
        self.assertGreater(after[k("heapd_received_bytes_total")],
                           before[k("heapd_received_bytes_total")])
        self.assertGreater(after[k("heapd_sent_bytes_total")], before[k("heapd_sent_bytes_total")])
        # Every op of the generated list has a series, used or not.
        ops = {dict(l)["op"] for (n, l) in after if n == "heapd_requests_total"}
        self.assertTrue({"hello", "alloc", "gc_collect", "heap_stats", "batch",
                         "kill_session", "unknown"} <= ops, ops)
        s.call("goodbye")

    def test_refusals_by_reason_and_sessions(self):
        before = self.value("heapd_connections_rejected_total", reason="auth")
        c = self.d.connect()
        self.assertEqual(c.hello(token="nope").status.name, "EAUTH")
        c.expect_closed()
        self.assertEqual(self.value("heapd_connections_rejected_total", reason="auth"),
                         before + 1)
        n = self.value("heapd_sessions")
        a = self.d.session(token="user")
        self.assertEqual(self.value("heapd_sessions"), n + 1)
        a.close()
        self.assertTrue(h.wait_until(lambda: self.value("heapd_sessions_detached") >= 1))
        b = self.d.session(token="user", session_id=a.hello_result.session_id,
                           resume_token=a.hello_result.resume_token)
        b.call("goodbye")

    def test_memory_collections_and_the_top_n_bound(self):
        sessions = [self.d.session(token="user") for _ in range(4)]
        for i, s in enumerate(sessions):
            for _ in range(200 * (i + 1)):
                s.alloc(size=64)
        expect = sum(200 * (i + 1) for i in range(4)) * 96  # 24 + 64 + 8 rounded: 96 bytes
        # Snapshots are at most a second old: wait for these sessions to be in them.
        def seen():
            m = h.parse_metrics(self.metrics())
            return m if m[("heapd_memory_object_bytes", frozenset())] >= expect else None
        m = h.wait_until(seen)
        self.assertIsNotNone(m, "object bytes never reached %d" % expect)
        top = {dict(l)["session"]: v for (n, l), v in m.items()
               if n == "heapd_session_object_bytes"}
        self.assertEqual(len(top), 2, top)  # metrics_top_sessions: 2 of 4 sessions
        biggest = {s.hello_result.session_id for s in sessions[2:]}
        self.assertEqual(set(top), biggest)
        self.assertGreaterEqual(m[("heapd_memory_arenas", frozenset())], 4)

        c0 = m[("heapd_gc_collections_total", frozenset({("generation", "2")}))]
        for s in sessions:
            s.ok("gc_collect")
        m = h.parse_metrics(self.metrics())
        self.assertEqual(m[("heapd_gc_collections_total", frozenset({("generation", "2")}))],
                         c0 + 4)
        total = sum(v for (n, l), v in m.items() if n == "heapd_gc_collections_total")
        self.assertEqual(m[("heapd_gc_pause_seconds_count", frozenset())], total)
        self.assertEqual(m[("heapd_gc_pause_seconds_bucket", frozenset({("le", "+Inf")}))], total)
        for s in sessions:
            s.call("goodbye")

    def test_probes(self):
        status, _, body = self.d.http_get("/healthz")
        self.assertEqual((status, body), (200, b"ok: 2 worker loops answering\n"))
        status, _, body = self.d.http_get("/readyz")
        self.assertEqual(status, 200)
        self.assertTrue(body.startswith(b"ready"), body)

    # -- HTTP itself ----------------------------------------------------------------------------

    def test_keep_alive_pipelining_and_head(self):
        got = raw(self.d.http_addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                                    b"HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
                                    b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        parts = got.split(b"HTTP/1.1 ")[1:]
        self.assertEqual([p[:3] for p in parts], [b"200", b"200", b"404"], got)
        self.assertIn(b"Connection: keep-alive", parts[0])
        self.assertTrue(parts[0].endswith(b"answering\n"))
        # HEAD: the length of the body it would have, and no body.
        head, _, rest = parts[1].partition(b"\r\n\r\n")
        self.assertRegex(head, rb"Content-Length: [1-9]")
        self.assertEqual(rest, b"")
        self.assertIn(b"Connection: close", parts[2])

    def test_only_get_and_head(self):
        status, headers, _ = self.d.http_get("/metrics", method="DELETE")
        self.assertEqual(status, 405)
        self.assertEqual(headers["Allow"], "GET, HEAD")

    def test_malformed_requests_get_400_and_a_close(self):
        for bad in (b"GET / HTTP/1.1\r\nHost x\r\n\r\n",          # a header without a colon
                    b"NONSENSE\r\n\r\n",
                    b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",  # a body
                    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                    b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                    b"\x00\x01\x02 / HTTP/1.1\r\n\r\n"):
            got = raw(self.d.http_addr, bad + b"GET /healthz HTTP/1.1\r\n\r\n")
            self.assertTrue(got.startswith(b"HTTP/1.1 400 "), (bad, got))
            self.assertEqual(got.count(b"HTTP/1.1"), 1, "answered past the bad request")
            self.assertIn(b"Connection: close", got)

    def test_oversized_requests(self):
        got = raw(self.d.http_addr, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n")
        self.assertTrue(got.startswith(b"HTTP/1.1 414 "), got[:80])
        got = raw(self.d.http_addr, b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 9000 + b"\r\n\r\n")
        self.assertTrue(got.startswith(b"HTTP/1.1 431 "), got[:80])

    def test_slow_and_idle_clients_are_timed_out(self):
        s = socket.create_connection(self.d.http_addr, timeout=5)
        t0 = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        got = b""
        # A byte every 50 ms does not extend the deadline (http_timeout: 500ms): the client
        # is still trickling when it is answered 408.
        try:
            for _ in range(20):
                s.sendall(b"x")
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - t0
        s.close()
        self.assertTrue(got.startswith(b"HTTP/1.1 408 "), got[:80])
        self.assertLess(elapsed, 3.0)
        # Idle keep-alive: closed without a word after http_timeout.
        s = socket.create_connection(self.d.http_addr, timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        first = s.recv(65536)
        self.assertTrue(first.startswith(b"HTTP/1.1 200"))
        t0 = time.monotonic()
        self.assertEqual(s.recv(65536), b"")
        self.assertLess(time.monotonic() - t0, 3.0)
        s.close()

    def test_connection_limit(self):
        held = [socket.create_connection(self.d.http_addr, timeout=5) for _ in range(4)]
        try:
            # The server has seen them once one of them is answered.
            held[0].sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            self.assertTrue(held[0].recv(65536).startswith(b"HTTP/1.1 200"))
            got = raw(self.d.http_addr, b"GET /healthz HTTP/1.1\r\n\r\n")
            self.assertTrue(got.startswith(b"HTTP/1.1 503 "), got[:80])
        finally:
            for s in held:
                s.close()
        self.assertTrue(h.wait_until(lambda: self.d.http_get("/healthz")[0] == 200))


class ShutdownTest(h.unittest.TestCase):
    def test_readyz_says_503_while_shutting_down(self):
        d = h.Daemon({"http": ["127.0.0.1:0"], "max_frame_bytes": "16MiB"}).start()
        try:
            self.assertEqual(d.http_get("/readyz")[0], 200)
            # A client that stops reading holds its worker's shutdown for up to 2 s, with
            # megabytes of answers unsent; meanwhile the HTTP server still answers.
            s = d.session()
            obj = s.alloc(size=8 << 20)
            reqs = [s.req("read", handle=obj, offset=0, length=8 << 20) for _ in range(4)]
            s.send_raw(b"".join(h.frame(h.pb.ClientFrame(request=r).SerializeToString())
                                for r in reqs))
            d.signal(signal.SIGTERM)
            d.wait_log("shutting down")
            status, _, body = d.http_get("/readyz")
            self.assertEqual((status, body), (503, b"not ready: shutting down\n"))
            self.assertEqual(d.wait_exit(10), 0)
        finally:
            d.stop()


if __name__ == "__main__":
    h.main()
