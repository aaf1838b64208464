# SPDX-License-Identifier: MIT
"""test_config.py: the config loader and the command line of the real heapd.

--check-config validates a file and prints the effective config (one line per key of the
table, secrets redacted); an unknown key or a bad value names file, line and column and
exits 78; --version and --help; the shipped config/heapd.yaml is valid and comments every
key; the log's json format.
"""

import json
import os
import re
import subprocess
import tempfile

import harness as h

SOURCE_DIR = os.environ.get("HEAPD_SOURCE_DIR",
                            os.path.join(os.path.dirname(__file__), "..", ".."))
SHIPPED = os.path.join(SOURCE_DIR, "config", "heapd.yaml")
KEYS = ["listen", "tls.listen", "tls.cert", "tls.key", "tls.client_ca", "tls.min_version",
        "unix_socket", "unix_socket_mode", "workers", "max_connections",
        "max_connections_per_ip", "hello_timeout", "frame_timeout", "min_frame_rate",
        "max_sessions", "max_frame_bytes", "session_max_bytes", "max_memory", "session_max_objects",
        "idle_timeout", "session_linger", "output_buffer_limit", "client_stall_timeout",
        "offload_above", "tokens", "admin_tokens", "admin_peer_uids", "log_level", "log_format",
        "gc_enabled", "gc_threshold", "gc_mode", "gc_increment_objects", "http",
        "http_admin_open", "http_max_connections", "http_timeout", "metrics_top_sessions",
        "slowlog_threshold_us", "slowlog_max_len", "monitor_buffer", "data_dir",
        "snapshot_interval", "snapshot_on_detach", "snapshot_compress", "replay_window",
        "replay_window_bytes", "node_id", "advertise_url", "peer_url", "peers"]


def printed_keys(text):
    """The key names of a printed config, a section's (its keys indented under "tls:") as
    section.key."""
    names, section = [], None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if line.startswith("  ") and section:
            names.append(section + "." + name.strip())
        elif not value.strip():
            section = name
        else:
            section = None
            names.append(name)
    return names


def run(*args, timeout=10):
    r = subprocess.run([h.HEAPD_BIN, *args], capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    assert not h.SANITIZER_RX.search(r.stderr), r.stderr
    return r


class ConfigTest(h.unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def write(self, text):
        path = os.path.join(self.dir.name, "c.yaml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def check_fails(self, text, where, message):
        path = self.write(text)
        for args in (["--check-config", path], ["--config", path]):
            r = run(*args)
            self.assertEqual(r.returncode, 78, r.stderr)
            self.assertIn("invalid config: %s:%s: " % (path, where), r.stderr)
            self.assertIn(message, r.stderr)

    def test_shipped_config_is_valid_and_documented(self):
        r = run("--check-config", SHIPPED)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(printed_keys(r.stdout), KEYS)
        self.assertIn('listen: ["127.0.0.1:7420"]', r.stdout)
        self.assertIn('unix_socket: "/tmp/heapd.sock"', r.stdout)
        # Every key is set in the shipped file, with a comment just above it.
        lines = h.read_file(SHIPPED).splitlines()
        for key in KEYS:
            section, _, sub = key.rpartition(".")
            line = "  %s:" % sub if section else key + ":"
            idx = [i for i, l in enumerate(lines) if l.startswith(line)]
            self.assertEqual(len(idx), 1, key)
            self.assertTrue(lines[idx[0] - 1].lstrip().startswith("#"), key)

    def test_effective_config_round_trips(self):
        path = self.write('max_frame_bytes: 64KiB\nidle_timeout: 1500ms\ntokens: ["a", "b"]\n'
                          "workers: 3\ngc_threshold: [1, 2, 3]\nunix_socket_mode: 0640\n")
        r = run("--check-config", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("max_frame_bytes: 64KiB\n", r.stdout)
        self.assertIn("idle_timeout: 1500ms\n", r.stdout)
        self.assertIn('tokens: ["<redacted>", "<redacted>"]\n', r.stdout)
        self.assertIn('unix_socket_mode: "0640"\n', r.stdout)
        self.assertNotIn('"a"', r.stdout)
        # The printed config, secrets aside, loads to the same thing.
        again = self.write(r.stdout.replace('tokens: ["<redacted>", "<redacted>"]',
                                            'tokens: ["a", "b"]'))
        self.assertEqual(run("--check-config", again).stdout, r.stdout)

    def test_empty_file_is_the_defaults(self):
        r = run("--check-config", self.write("# nothing\n"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("max_connections: 1024\n", r.stdout)
        self.assertIn("session_linger: 30s\n", r.stdout)

    def test_unknown_key(self):
        self.check_fails("workers: 2\nmax_conections: 10\n", "2:1", 'unknown key "max_conections"')

    def test_bad_values(self):
        self.check_fails("max_sessions: lots\n", "1:15", 'max_sessions: "lots" is not an integer')
        self.check_fails("workers: 2\nmax_connections: -1\n", "2:18", "max_connections")
        self.check_fails("max_connections: 0\n", "1:18", "out of range (1..1000000)")
        self.check_fails("max_frame_bytes: 2KiB\n", "1:18", "out of range (8KiB..1GiB)")
        self.check_fails("idle_timeout: 5 minutes\n", "1:15", "a duration such as 30s")
        self.check_fails("gc_enabled: maybe\n", "1:13", "not true or false")
        self.check_fails("log_level: loud\n", "1:12", 'not one of debug, info, warn, error')
        self.check_fails("gc_threshold: [1, 2]\n", "1:15", "three integers")
        self.check_fails("listen: 127.0.0.1:80\n", "1:9", "expected a list")
        self.check_fails('listen: ["127.0.0.1:80", "nope"]\n', "1:26", "expected host:port")
        self.check_fails('listen: ["127.0.0.1:99999"]\n', "1:10", "expected host:port")
        self.check_fails("unix_socket_mode: 0999\n", "1:19", "octal mode")
        self.check_fails("unix_socket: " + "x" * 120 + "\n", "1:14", "longer than 107")
        self.check_fails('tokens: ["has space"]\n', "1:10", "tokens may not contain spaces")
        self.check_fails("workers: 1\nworkers: 2\n", "2:1", "workers: given twice")
        self.check_fails("- a\n- b\n", "1:1", "expected a mapping")

    def test_yaml_syntax_error(self):
        path = self.write("workers: 2\nlisten: [\"a\"\n")
        r = run("--check-config", path)
        self.assertEqual(r.returncode, 78)
        self.assertRegex(r.stderr, re.escape(path) + r":\d+:\d+: ")

    def test_missing_file(self):
        r = run("--config", os.path.join(self.dir.name, "absent.yaml"))
        self.assertEqual(r.returncode, 78)
        self.assertIn("cannot open", r.stderr)

    def test_version_help_bad_option(self):
        r = run("--version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^heapd \d+\.\d+\.\d+ \(protocol 1\)")
        r = run("--help")
        self.assertEqual(r.returncode, 0)
        for opt in ("--config", "--check-config", "--version", "--help"):
            self.assertIn(opt, r.stdout)
        self.assertEqual(run("--bogus").returncode, 2)
        self.assertEqual(run("extra").returncode, 2)

    def test_port_in_use_exits_1(self):
        with h.Daemon(unix=False) as d:
            taken = "127.0.0.1:%d" % d.tcp_addr[1]
            path = self.write('listen: ["%s"]\nunix_socket: ""\nhttp: []\n' % taken)
            r = run("--config", path)
            self.assertEqual(r.returncode, 1)
            self.assertIn("Address already in use", r.stderr)

    def test_live_unix_socket_is_not_stolen(self):
        with h.Daemon(tcp=False) as d:
            path = self.write('listen: []\nunix_socket: "%s"\nhttp: []\n' % d.sock_path)
            r = run("--config", path)
            self.assertEqual(r.returncode, 1)
            self.assertIn("Address already in use", r.stderr)
            d.session().ok("ping")

    def test_stale_unix_socket_is_replaced(self):
        d = h.Daemon(tcp=False).start()
        d.proc.kill()  # no chance to remove its socket file
        d.proc.wait()
        self.assertTrue(os.path.exists(d.sock_path))
        d2 = h.Daemon(tcp=False)
        d2.config["unix_socket"] = d.sock_path
        d2.write_config(d2.config)
        with d2:
            d2.session().ok("ping")
            self.assertEqual(os.stat(d.sock_path).st_mode & 0o777, 0o600)
        d.stop()

    def test_json_log_format(self):
        with h.Daemon({"log_format": "json", "tokens": ["t"]}) as d:
            c = d.session(client_name='quote " and \\ back', token="t")
            c.ok("ping")
            sid = c.hello_result.session_id
            d.wait_log("session .* created")
            with d.connect() as bad:
                bad.hello(token="wrong")
            d.wait_log("hello refused")
        lines = d.log()
        self.assertGreater(len(lines), 3)
        recs = [json.loads(line) for line in lines]
        for rec in recs:
            self.assertTrue({"ts", "level", "msg"} <= set(rec), rec)
            self.assertTrue(set(rec) <= {"ts", "level", "msg", "session", "peer", "op", "code",
                                         "error"}, rec)
            self.assertIn(rec["level"], ("debug", "info", "warn", "error"))
        self.assertTrue(any('quote " and \\ back' in r["msg"] for r in recs))
        # Structured fields, for a log pipeline to filter on rather than to parse messages.
        created = [r for r in recs if "created" in r["msg"]][0]
        self.assertEqual((created["session"], created["op"]), (sid, "hello"))
        self.assertTrue(created["peer"].startswith("unix:pid="))
        refused = [r for r in recs if "hello refused" in r["msg"]][0]
        self.assertEqual((refused["code"], refused["error"], refused["level"]),
                         (23, "EAUTH", "warn"))
        self.assertIn("peer", refused)

    def test_log_level_filters(self):
        # No "ready" line at this level: the harness waits for READY=1 on its notify socket.
        d = h.Daemon({"log_level": "warn"}).start()
        try:
            d.session().ok("ping")
            c = d.connect()
            c.send_raw(b"\0\0\0\0")
            c.expect_closed()
            d.wait_log("warn .*zero-length frame")
        finally:
            d.stop()
        self.assertFalse(any(" info " in l or " debug " in l for l in d.log()))


if __name__ == "__main__":
    h.main()
