#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""test_heapctl.py: heapctl against a real heapd.

    test_heapctl.py HEAPCTL [BUILD_DIR]

Starts heapd (HEAPD_BIN) through tests/server/harness.py, the shared daemon fixture, on a
temporary Unix socket with a client token and an admin token, then runs HEAPCTL as a user
would: every command with --json, checking the
documents and the exit codes (0 ok, 1 server error, 2 usage, 3 cannot connect, 5 denied), the
shell fed from a pipe, --keep followed by --session/--resume, and a few text renderings. With
BUILD_DIR it also checks `cmake --install` and the pkg-config file by compiling and running a
small program against the installed library.
"""
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
import unittest

import harness as h

HEAPCTL = BUILD_DIR = None
DAEMON = None
TMP = SOCK = None
USER = "user-token"
ADMIN = "admin-token"


def start_daemon():
    global TMP, SOCK, DAEMON
    DAEMON = h.Daemon({"tokens": [USER], "admin_tokens": [ADMIN], "session_linger": "60s",
                       "log_level": "warn"}, tcp=False).start()  # peer credentials off
    TMP, SOCK = DAEMON.dir, DAEMON.sock_path


def run(*args, token=USER, json_out=False, stdin=None, check=0, url=None, extra=()):
    """Runs heapctl; check is the expected exit code (None: anything)."""
    cmd = [HEAPCTL, "--connect", url or "unix:" + SOCK]
    if token:
        cmd += ["--token", token]
    if json_out:
        cmd.append("--json")
    cmd += list(extra) + list(args)
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    if check is not None and r.returncode != check:
        raise AssertionError(
            f"{cmd}: exit {r.returncode}, wanted {check}\nstdout: {r.stdout}\nstderr: {r.stderr}"
        )
    return r


def js(*args, check=0, **kw):
    """Runs heapctl --json and returns its one document."""
    r = run(*args, json_out=True, check=check, **kw)
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    if len(lines) != 1:
        raise AssertionError(f"{args}: want one JSON line, got {r.stdout!r}")
    return json.loads(lines[0])


def jlines(*args, check=0, **kw):
    r = run(*args, json_out=True, check=check, **kw)
    return [json.loads(l) for l in r.stdout.splitlines() if l.strip()]


def pty_drain(pid, fd, timeout=20):
    """What heapctl writes to its terminal until it closes it; kills it after timeout."""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        try:
            chunk = os.read(fd, 65536) if r else None
        except OSError:  # EIO: the terminal's other end is closed
            return out
        if chunk == b"":
            return out
        out += chunk or b""
    os.kill(pid, signal.SIGKILL)
    return out


class Basics(unittest.TestCase):
    def test_ping(self):
        d = js("ping")
        self.assertTrue(d["ok"])
        self.assertEqual(d["command"], "ping")
        self.assertEqual(d["protocol_version"], 1)
        # 64-bit values travel as strings: a JSON number loses them past 2^53.
        self.assertIsInstance(d["server_time_unix_ns"], str)
        self.assertGreater(int(d["server_time_unix_ns"]), 1_600_000_000 * 10**9)
        self.assertFalse(d["admin"])
        self.assertTrue(d["session_id"])
        self.assertIn("PONG", run("ping").stdout)

    def test_usage(self):
        for args in (["--json"], ["--json", "frobnicate"], ["--json", "alloc", "x"],
                     ["--json", "--resume", "t", "ping"], ["--json", "--timeout", "x", "ping"]):
            r = subprocess.run([HEAPCTL, "--connect", "unix:" + SOCK] + args,
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 2, args)
            d = json.loads(r.stdout)
            self.assertFalse(d["ok"])
            self.assertEqual(d["error"]["name"], "usage")
            self.assertEqual(d["exit"], 2)
        r = subprocess.run([HEAPCTL], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("no command", r.stderr)
        r = subprocess.run([HEAPCTL, "--help"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0)
        self.assertIn("Exit codes", r.stdout)
        self.assertIn("3  cannot connect", r.stdout)
        d = js("gc", "frobnicate", check=2)
        self.assertIn("unknown subcommand", d["error"]["message"])
        d = js("help")
        self.assertIn("shell", [c["name"] for c in d["commands"]])
        d = js("help", "trace")
        self.assertIn("compare", [s["name"] for s in d["subcommands"]])
        # Which commands need admin comes from the ops' (opdef) in heapd.proto.
        self.assertTrue(js("help", "server")["admin"])
        self.assertTrue(js("help", "kill")["admin"])
        self.assertFalse(js("help", "ping")["admin"])
        self.assertFalse(js("help", "alloc")["admin"])
        self.assertEqual({c["name"] for c in js("help")["commands"] if c["admin"]},
                         {"server", "sessions", "inspect", "kill", "top", "info", "slowlog",
                          "monitor", "save", "drain"})
        r = subprocess.run([HEAPCTL, "--help"], capture_output=True, text=True, timeout=30)
        self.assertIn("(admin)", [l for l in r.stdout.splitlines() if "largest heap" in l][0])

    def test_cannot_connect(self):
        d = js("ping", url="unix:" + os.path.join(TMP, "nothing.sock"), check=3)
        self.assertEqual(d["error"]["name"], "ECONNECT")
        self.assertEqual(d["exit"], 3)
        r = run("ping", url="tcp://127.0.0.1:1", check=3)
        self.assertIn("cannot connect", r.stderr)

    def test_auth(self):
        d = js("ping", token="wrong", check=5)
        self.assertEqual(d["error"]["name"], "EAUTH")
        self.assertEqual(d["error"]["code"], 23)  # the protocol's number, positive
        d = js("ping", token=None, check=5)
        self.assertEqual(d["error"]["name"], "EAUTH")

    def test_url_forms(self):
        """The URL forms of the Python client's heapd.parse_url, with the same checks: a bad
        URL is a usage error (2) before anything is tried; a good one that leads nowhere
        cannot connect (3)."""
        good = ["tcp://127.0.0.1:1", "127.0.0.1:1", "tcp://127.0.0.1:0001", "[::1]:1",
                "tcp://[::1]:1", "unix:/nonexistent/x.sock", "unix:///nonexistent/x.sock",
                "unix:nonexistent-rel.sock", "/nonexistent/x.sock"]
        bad = ["tcp://127.0.0.1", "127.0.0.1:", ":7420", "127.0.0.1:65536", "127.0.0.1:7x",
               "[::1]", "[::1]7420", "unix:", "http://127.0.0.1:1", "a/b:1", "[a/b]:1"]
        for url in good:
            self.assertEqual(js("ping", url=url, check=3)["error"]["name"], "ECONNECT", url)
        for url in bad:
            d = js("ping", url=url, check=2)
            self.assertIn(url, d["error"]["message"])
        self.assertEqual(js("ping", url=SOCK)["command"], "ping")  # a bare path
        # The same verdicts as the Python client's parser, where it has these forms.
        sys.path.insert(0, os.path.join(BUILD_DIR or "", "clients", "python"))
        try:
            import heapd
            heapd.parse_url("/probe")
        except (ImportError, ValueError, AttributeError):
            self.skipTest("no heapd.parse_url with the bare forms to compare with")
        for url in good:
            heapd.parse_url(url)
        for url in bad:
            with self.assertRaises(ValueError, msg=url):
                heapd.parse_url(url)

    def test_env(self):
        env = dict(os.environ, HEAPD_URL="unix:" + SOCK, HEAPD_TOKEN=USER)
        r = subprocess.run([HEAPCTL, "--json", "ping"], capture_output=True, text=True,
                           env=env, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)


class Stats(unittest.TestCase):
    def test_stats_json(self):
        d = js("stats")
        heap = d["heap"]
        for key in ("objects", "object_bytes", "arenas_current", "bytes_quantization",
                    "large_bytes"):
            self.assertIn(key, heap)
        self.assertEqual(heap["objects"], 0)
        self.assertEqual(d["classes"], [])
        self.assertEqual(d["gc"]["threshold"], [700, 10, 10])
        self.assertTrue(d["gc"]["enabled"])
        self.assertEqual(len(d["gc"]["generations"]), 3)

    def test_stats_text(self):
        r = run("stats")
        self.assertIn("class   size   num pools", r.stdout)
        self.assertIn("arenas_current", r.stdout)
        self.assertIn("generation 2: collections=0", r.stdout)
        # Without --session it says whose heap that was.
        self.assertIn("heapctl's own new, empty session", r.stderr)
        self.assertTrue(js("stats")["own_session"])


class Gc(unittest.TestCase):
    def test_show(self):
        d = js("gc")
        self.assertEqual(d["subcommand"], "show")
        self.assertEqual(d["count"], [0, 0, 0])
        self.assertEqual(d["threshold"], [700, 10, 10])
        self.assertEqual(d["freeze_count"], 0)
        self.assertEqual(len(d["generations"]), 3)

    def test_subcommands(self):
        self.assertEqual(js("gc", "count")["count"], [0, 0, 0])
        self.assertEqual(js("gc", "threshold")["threshold"], [700, 10, 10])
        d = js("gc", "garbage")
        self.assertEqual((d["total"], d["handles"]), (0, []))
        self.assertEqual(js("gc", "debug")["debug"], 0)
        # What would change heapctl's own session, which dies with it, is refused with a
        # hint; with --keep it is what was asked for.
        for args in (["threshold", "100", "5"], ["disable"], ["enable"], ["collect"],
                     ["freeze"], ["unfreeze"], ["debug", "32"], ["garbage-clear"]):
            d = js("gc", *args, check=2)
            self.assertIn("--session ID", d["error"]["message"], args)
        self.assertIn("heapctl sessions", run("gc", "disable", check=2).stderr)
        self.assertEqual(js("gc", "threshold", "100", "5", extra=["--keep"])["threshold"],
                         [100, 5, 10])
        self.assertFalse(js("gc", "disable", extra=["--keep"])["enabled"])
        d = js("gc", "collect", extra=["--keep"])
        self.assertEqual((d["generation"], d["found"]), (2, 0))
        self.assertEqual(js("gc", "collect", "1", extra=["--keep"])["generation"], 1)
        d = js("gc", "collect", "9", check=1, extra=["--keep"])
        self.assertEqual(d["error"]["name"], "EINVAL")
        self.assertEqual(d["exit"], 1)
        self.assertEqual(js("gc", "freeze", extra=["--keep"])["freeze_count"], 0)
        self.assertEqual(js("gc", "debug", "32", extra=["--keep"])["debug"], 32)
        d = js("gc", "mode")
        self.assertEqual((d["mode"], d["increment_objects"], d["phase"]),
                         ("generational", 4000, "idle"))
        self.assertIn("--session ID", js("gc", "mode", "incremental", check=2)["error"]["message"])
        d = js("gc", "mode", "incremental", "250", extra=["--keep"])
        self.assertEqual((d["mode"], d["increment_objects"]), ("incremental", 250))
        self.assertIn("mode:       incremental",
                      run("gc", "mode", "incremental", extra=["--keep"]).stdout)
        for bad in (["fast"], ["incremental", "0"], ["incremental", "x"], ["a", "b", "c"]):
            d = js("gc", "mode", *bad, check=2, extra=["--keep"])
            self.assertIn("gc mode", d["error"]["message"], bad)
        js("gc", "threshold", "x", check=2)
        self.assertIn("threshold:  700 10 10", run("gc").stdout)


class Trace(unittest.TestCase):
    def test_trace(self):
        d = js("trace")
        self.assertEqual((d["subcommand"], d["tracing"], d["current"]), ("status", False, 0))
        self.assertTrue(d["own_session"])
        d = js("trace", "top", check=1)
        self.assertEqual(d["error"]["name"], "ENOTRACE")
        for sub in ("start", "stop", "clear", "reset-peak", "snapshot"):
            self.assertIn("--session ID", js("trace", sub, check=2)["error"]["message"])
        self.assertTrue(js("trace", "start", extra=["--keep"])["tracing"])
        self.assertFalse(js("trace", "stop", extra=["--keep"])["tracing"])
        self.assertFalse(js("trace", "clear", extra=["--keep"])["tracing"])
        self.assertFalse(js("trace", "reset-peak", extra=["--keep"])["tracing"])
        d = js("trace", "snapshot", check=1, extra=["--keep"])
        self.assertEqual(d["error"]["name"], "ENOTRACE")
        d = js("trace", "free", "7", check=1, extra=["--keep"])
        self.assertEqual(d["error"]["name"], "ENOSNAP")
        js("trace", "compare", "1", check=2)

    def test_trace_in_shell(self):
        script = (
            "trace start\n"
            "alloc a size=100 site=a.py:1 tag=A\n"
            "trace snapshot\n"
            "alloc b size=300 site=b.py:2 tag=B\n"
            "alloc c size=300 site=b.py:2 tag=B\n"
            "trace snapshot\n"
            "trace top 2\n"
            "trace top --by tag -n 1\n"
            "trace compare 2 1\n"
            "trace free 1\n"
        )
        docs = jlines("shell", stdin=script)
        self.assertTrue(all(d["ok"] for d in docs), docs)
        snaps = [d["snapshot"] for d in docs if d.get("subcommand") == "snapshot"]
        self.assertEqual(len(snaps), 2)
        top = docs[6]
        self.assertEqual(top["by"], "site")
        self.assertEqual([s["key"] for s in top["stats"]], ["b.py:2", "a.py:1"])
        self.assertEqual(top["stats"][0]["count"], 2)
        bytag = docs[7]
        self.assertEqual(bytag["by"], "tag")
        self.assertEqual(len(bytag["stats"]), 1)
        self.assertEqual(bytag["total"], 2)
        cmp = docs[8]
        self.assertEqual(cmp["stats"][0]["key"], "b.py:2")
        self.assertEqual(cmp["stats"][0]["count_diff"], 2)
        text = run("shell", stdin=script).stdout
        self.assertIn("[ Top 2 by site ]", text)
        self.assertIn("b.py:2: size=", text)


class Shell(unittest.TestCase):
    SCRIPT = (
        "# a cycle, collected\n"
        "events finalized weakref_cleared\n"
        "alloc a slots=1 tag=Node finalizer\n"
        "alloc b slots=1 tag=Node\n"
        "link a 0 b\n"
        "link b 0 a\n"
        "weak w a notify\n"
        "info a\n"
        "refcount b\n"
        "sizeof a\n"
        "tracked a\n"
        "referrers b\n"
        "referents a\n"
        "objects\n"
        "get a 0 c\n"
        "decref c\n"
        "release a\n"
        "release b\n"
        "gc collect\n"
        "deref w\n"
        "unweak w\n"
        'alloc s size=8 data="hi there"\n'
        "read s 0 8\n"
        "write s 0 HO\n"
        "read s 0 2\n"
        "incref s 2\n"
        "refcount s\n"
        "vars\n"
        "session\n"
        "stats\n"
        "echo done\n"
    )

    def test_script_json(self):
        docs = jlines("shell", stdin=self.SCRIPT)
        cmds = [d for d in docs if "command" in d]
        events = [d for d in docs if "event" in d]
        self.assertTrue(all(d["ok"] for d in cmds), [d for d in cmds if not d["ok"]])
        by = {}
        for d in cmds:
            by.setdefault(d["command"], []).append(d)
        a = by["alloc"][0]["handle"]
        b = by["alloc"][1]["handle"]
        self.assertIsInstance(a, str)  # handles are 64-bit: strings in JSON
        self.assertGreater(int(a), 2**32)  # the check is in the high half
        info = by["info"][0]
        self.assertEqual((info["refcount"], info["client_refs"], info["slots"]), (2, 1, 1))
        self.assertEqual((info["tag"], info["flags"], info["generation"]), ("Node", 1, 0))
        self.assertEqual(by["refcount"][0]["refcount"], 2)
        self.assertTrue(by["tracked"][0]["tracked"])
        self.assertEqual(by["referrers"][0]["handles"], [a])
        self.assertEqual(by["referents"][0]["handles"], [b])
        self.assertEqual(sorted(by["objects"][0]["handles"]), sorted([a, b]))
        self.assertEqual(by["get"][0]["handle"], b)
        self.assertEqual(by["gc"][0]["found"], 2)
        self.assertFalse(by["deref"][0]["alive"])
        self.assertEqual(by["read"][0]["data"], "hi there")
        self.assertEqual(by["read"][1]["data"], "HO")
        self.assertEqual(by["refcount"][1]["refcount"], 3)
        self.assertEqual(sorted(v["name"] for v in by["vars"][0]["vars"]), ["c", "s"])
        self.assertTrue(by["session"][0]["session_id"])
        self.assertEqual(by["stats"][0]["heap"]["objects"], 1)
        self.assertEqual(by["echo"][0]["text"], "done")
        kinds = sorted(e["event"] for e in events)
        self.assertEqual(kinds, ["finalized", "weakref_cleared"])
        fin = [e for e in events if e["event"] == "finalized"][0]
        self.assertEqual((fin["handle"], fin["tag"]), (a, "Node"))

    def test_script_text(self):
        r = run("shell", stdin=self.SCRIPT)
        self.assertIn("a = 0x", r.stdout)
        self.assertIn("event: finalized", r.stdout)
        self.assertIn("collected generation 2: 2 unreachable", r.stdout)
        self.assertIn('"hi there"', r.stdout)
        self.assertIn("done", r.stdout)

    def test_errors(self):
        script = (
            "alloc a size=4\n"
            "read a 2 10\n"          # ERANGE: 1
            "frobnicate\n"           # usage: 2
            'echo "unclosed\n'       # usage: 2
            "decref 12345\n"         # ENOOBJ: 1
            "link a\n"               # usage: 2
            "top\n"                  # not in the shell: 2
            "refcount nobody\n"      # unknown name: 2
            "server\n"               # EPERM: 5
            "echo still here\n"
        )
        r = run("shell", stdin=script, json_out=True, check=0)
        docs = [json.loads(l) for l in r.stdout.splitlines()]
        self.assertEqual(len(docs), 10)
        names = [d["error"]["name"] if not d["ok"] else "ok" for d in docs]
        self.assertEqual(names, ["ok", "ERANGE", "usage", "usage", "ENOOBJ", "usage", "usage",
                                 "usage", "EPERM", "ok"])
        self.assertEqual([d.get("exit", 0) for d in docs], [0, 1, 2, 2, 1, 2, 2, 2, 5, 0])
        # The exit code is the last command's, not an earlier error's; text errors go to
        # stderr.
        r = run("shell", stdin="decref 1\necho x\n", check=0)
        self.assertIn("ENOOBJ", r.stderr)
        run("shell", stdin="echo x\ndecref 1\n", check=1)
        run("shell", stdin="help\nquit\necho never\n", check=0)
        self.assertIn("alloc", run("shell", stdin="help\n").stdout)
        r = run("shell", stdin="", check=0)
        self.assertEqual(r.stdout, "")

    def test_rebinding_releases(self):
        # A name given a new object gives up the old one's reference, as a Python name does:
        # the first object is freed, and a note says so.
        script = ("alloc a size=8\nweak w a\nalloc a size=16\nalloc b\nweak w b\n"
                  "stats\n")
        r = run("shell", stdin=script, json_out=True)
        docs = [json.loads(l) for l in r.stdout.splitlines()]
        self.assertEqual(docs[-1]["heap"]["objects"], 2)  # the first `a` is gone
        self.assertIn("a was rebound; the reference it held", r.stderr)
        self.assertIn("w was rebound; the weak reference it held", r.stderr)


class Sessions(unittest.TestCase):
    def keep(self, script):
        """Runs a shell with --keep; returns (session id, resume token)."""
        docs = jlines("shell", stdin=script, extra=["--keep"])
        kept = docs[-1]["kept_session"]
        return kept["session_id"], kept["resume_token"]

    def test_keep_and_resume(self):
        sid, tok = self.keep("alloc a size=100\nalloc b size=100\n")
        d = js("stats", extra=["--session", sid, "--resume", tok])
        self.assertEqual(d["heap"]["objects"], 2)
        # Without --keep this second invocation ended the session.
        d = js("stats", extra=["--session", sid, "--resume", tok], check=1)
        self.assertEqual(d["error"]["name"], "ENOSESSION")
        # --keep on a plain command reports the session in its document.
        d = js("ping", extra=["--keep"])
        self.assertIn("kept_session", d)
        r = run("ping", extra=["--keep"])
        self.assertIn("--session", r.stderr)

    def test_admin(self):
        d = js("server", check=5)
        self.assertEqual(d["error"]["name"], "EPERM")
        self.assertEqual(d["exit"], 5)
        js("sessions", check=5)
        js("top", "--once", check=5)

        small, _ = self.keep("alloc a size=16\n")
        big, _ = self.keep("alloc a size=4000\nalloc b size=4000\n")
        # Counters are published every few milliseconds: ask until they are (each ask is a
        # heapctl run, which paces it).
        def published():
            d = js("sessions", token=ADMIN)
            rows = {s["id"]: s for s in d["sessions"]}
            ok = rows.get(big, {}).get("objects") == 2 and rows.get(small, {}).get("objects")
            return (d, rows) if ok else None

        got = h.wait_until(published)
        self.assertIsNotNone(got, "the counters were never published")
        d, rows = got
        sizes = [s["bytes"] for s in d["sessions"]]
        self.assertEqual(sizes, sorted(sizes, reverse=True))
        ids = [s["id"] for s in d["sessions"]]
        self.assertLess(ids.index(big), ids.index(small))
        self.assertFalse(rows[big]["attached"])
        self.assertEqual(sum(1 for s in d["sessions"] if s["self"]), 1)

        d = js("server", token=ADMIN)
        self.assertGreaterEqual(d["server"]["sessions"], 3)
        self.assertGreaterEqual(d["server"]["sessions_detached"], 2)
        self.assertIn("rss_bytes", d["server"])
        self.assertIn("sessions_detached", run("server", token=ADMIN).stdout)

        self.assertEqual(js("kill", big, token=ADMIN)["killed"], big)
        d = js("kill", big, token=ADMIN, check=1)
        self.assertEqual(d["error"]["name"], "ENOSESSION")
        js("kill", small, token=ADMIN)
        js("kill", token=ADMIN, check=2)

    def test_top(self):
        d = js("top", "--once", token=ADMIN)
        self.assertIn("server", d)
        self.assertIn("sessions", d)
        docs = jlines("top", "-n", "3", "-d", "0.05", token=ADMIN)
        self.assertEqual(len(docs), 3)
        self.assertTrue(all(d["command"] == "top" and d["ok"] for d in docs))
        self.assertGreaterEqual(docs[2]["server"]["requests"], docs[0]["server"]["requests"])
        text = run("top", "--once", token=ADMIN).stdout
        self.assertIn("SESSION", text)
        self.assertIn("Mem:", text)
        js("top", "-n", "0", token=ADMIN, check=2)


class OtherSession(unittest.TestCase):
    """--session ID on every heap command: the admin's view of another session."""

    def setUp(self):
        docs = jlines("shell", extra=["--keep"], stdin=(
            "alloc a slots=1 size=200 tag=Node site=app.py:1\n"
            "alloc b slots=1 size=200 tag=Node site=app.py:1\n"
            "alloc c size=3000 tag=Blob site=\"io.py:7\\nlib.py:3\\nmain.py:1\"\n"
            "link a 0 b\nlink b 0 a\nrelease a\nrelease b\n"))
        self.sid = docs[-1]["kept_session"]["session_id"]

    def tearDown(self):
        js("kill", self.sid, token=ADMIN, check=None)

    def on(self, *args, check=0):
        return js(*args, token=ADMIN, extra=["--session", self.sid], check=check)

    def test_every_heap_command(self):
        d = self.on("stats")
        self.assertEqual(d["session"], self.sid)
        self.assertNotIn("own_session", d)
        self.assertEqual(d["heap"]["objects"], 3)
        census = self.on("census")
        self.assertEqual([(s["key"], s["count"]) for s in census["stats"]],
                         [("Blob", 1), ("Node", 2)])
        census = self.on("census", "--by", "site", "--sort", "count", "-n", "1")
        self.assertEqual([(s["key"], s["count"]) for s in census["stats"]], [("app.py:1", 2)])
        self.assertEqual(census["total"], 2)
        text = run("census", "--by", "site", token=ADMIN, extra=["--session", self.sid]).stdout
        self.assertIn("  io.py:7 (+2 frames) ", text)  # a traceback: its most recent frame
        self.assertIn("io.py:7\nlib.py:3\nmain.py:1", [s["key"] for s in census["stats"]]
                      + [s["key"] for s in self.on("census", "--by", "site")["stats"]])
        self.assertEqual(self.on("gc")["count"][0], 2)
        self.assertEqual(self.on("gc", "count")["count"][0], 2)
        self.assertEqual(self.on("gc", "threshold", "50", "5")["threshold"], [50, 5, 10])
        self.assertEqual(self.on("gc", "threshold")["threshold"], [50, 5, 10])
        self.assertFalse(self.on("gc", "disable")["enabled"])
        self.assertTrue(self.on("gc", "enable")["enabled"])
        self.assertEqual(self.on("gc", "debug")["debug"], 0)
        self.assertEqual(self.on("gc", "collect")["found"], 2)  # the a <-> b cycle
        self.assertEqual(self.on("stats")["heap"]["objects"], 1)
        self.assertEqual(self.on("trace")["tracing"], False)
        self.assertTrue(self.on("trace", "start")["tracing"])
        self.assertEqual(self.on("trace", "top")["stats"], [])  # nothing new traced yet
        self.assertFalse(self.on("trace", "stop")["tracing"])
        # What an operator may not do to someone else's heap: the server says so.
        for args in (["gc", "freeze"], ["gc", "unfreeze"], ["gc", "debug", "32"],
                     ["gc", "garbage"], ["gc", "garbage-clear"], ["trace", "clear"],
                     ["trace", "reset-peak"], ["trace", "snapshot"], ["trace", "free", "1"],
                     ["trace", "compare", "2", "1"], ["trace", "top", "1"]):
            d = self.on(*args, check=5)
            self.assertEqual(d["error"]["name"], "EPERM", args)
            self.assertIn("cannot be run in another session", d["error"]["message"])
        # Only an admin may.
        d = js("stats", extra=["--session", self.sid], check=5)
        self.assertEqual(d["error"]["name"], "EPERM")
        d = js("stats", token=ADMIN, extra=["--session", "0123456789abcdef"], check=1)
        self.assertEqual(d["error"]["name"], "ENOSESSION")
        text = run("gc", "collect", token=ADMIN, extra=["--session", self.sid]).stdout
        self.assertIn("collected generation 2", text)

    def test_inspect(self):
        d = js("inspect", self.sid, token=ADMIN)
        self.assertEqual(d["session"]["id"], self.sid)
        self.assertTrue(d["session"]["client_name"].startswith("heapctl/"))
        self.assertFalse(d["session"]["attached"])
        self.assertEqual(d["session"]["last_op"], "decref")
        self.assertEqual(d["heap"]["objects"], 3)
        self.assertEqual(d["tags_by_bytes"][0]["key"], "Blob")
        self.assertEqual(d["tags_by_count"][0]["key"], "Node")
        self.assertEqual(d["sites_by_count"][0], {"key": "app.py:1", "count": 2,
                                                  "bytes": d["sites_by_count"][0]["bytes"]})
        self.assertEqual(d["gc"]["threshold"], [700, 10, 10])
        self.assertFalse(d["tracing"]["on"])
        self.assertEqual(d["queues"]["output_bytes"], 0)
        self.assertEqual(js("inspect", token=ADMIN, extra=["--session", self.sid])["session"]
                         ["id"], self.sid)
        text = run("inspect", self.sid, "-n", "1", token=ADMIN).stdout
        for want in ("session " + self.sid, "largest tags by bytes", "Blob", "tracing off",
                     "peer          unix:pid="):
            self.assertIn(want, text)
        js("inspect", token=ADMIN, check=2)
        self.assertEqual(js("inspect", self.sid, check=5)["error"]["name"], "EPERM")

    def test_sessions_show_names_and_last_ops(self):
        d = h.wait_until(lambda: (lambda d: d if any(
            s["id"] == self.sid and s["objects"] == 3 for s in d["sessions"]) else None)(
            js("sessions", token=ADMIN)))
        self.assertIsNotNone(d, "the counters were never published")
        row = [s for s in d["sessions"] if s["id"] == self.sid][0]
        self.assertTrue(row["client_name"].startswith("heapctl/"))
        self.assertEqual(row["last_op"], "decref")
        self.assertEqual(row["allocs_total"], 3)
        text = run("sessions", token=ADMIN).stdout
        self.assertIn("LAST OP", text.splitlines()[0])


class Operators(unittest.TestCase):
    """info, slowlog, latency, monitor: against a daemon of their own with a 1 us slowlog
    threshold, so that every request that does real work is in the slowlog."""

    @classmethod
    def setUpClass(cls):
        cls.d = h.Daemon({"admin_tokens": [ADMIN], "slowlog_threshold_us": 1,
                          "slowlog_max_len": 50, "log_level": "info"}, tcp=False).start()
        cls.url = "unix:" + cls.d.sock_path

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def js(self, *args, check=0):
        return js(*args, token=ADMIN, url=self.url, check=check)

    def test_info(self):
        d = self.js("info")
        self.assertEqual(list(d["sections"]), ["server", "clients", "memory", "gc", "limits",
                                               "stats", "persistence", "cluster"])
        self.assertEqual(d["sections"]["limits"]["slowlog_threshold_us"], 1)
        self.assertIsInstance(d["sections"]["memory"]["fragmentation_ratio"], float)
        self.assertEqual(list(self.js("info", "memory")["sections"]), ["memory"])
        text = run("info", "clients", token=ADMIN, url=self.url).stdout
        self.assertTrue(text.startswith("# Clients\n"), text)
        self.assertRegex(text, r"\nsessions:\d+\n")
        self.assertEqual(self.js("info", "nope", check=1)["error"]["name"], "EINVAL")
        self.assertEqual(js("info", url=self.url, token=None, check=5)["error"]["code"], 24)

    def test_slowlog(self):
        shell = "alloc big size=8000000 tag=Big\ncensus\n"
        run("shell", stdin=shell, url=self.url, token=None)
        d = self.js("slowlog", "get", "50")
        ops = [e["op"] for e in d["entries"]]
        self.assertIn("alloc", ops)
        e = d["entries"][ops.index("alloc")]
        self.assertIn("size=8000000", e["args"])
        self.assertIsInstance(e["id"], str)  # a 64-bit id
        self.assertGreaterEqual(e["duration_us"], 1)
        self.assertEqual(e["status_name"], "OK")
        self.assertGreaterEqual(self.js("slowlog", "len")["len"], 1)
        text = run("slowlog", token=ADMIN, url=self.url).stdout
        self.assertIn("alloc size=8000000", text)
        self.assertIn(" us  session ", text)
        self.js("slowlog", "reset")
        # What is left is the reset itself and heapctl's goodbye after it.
        left = {e["op"] for e in self.js("slowlog", "get", "10")["entries"]}
        self.assertLessEqual(left, {"slowlog_reset", "goodbye"})
        self.js("slowlog", "frobnicate", check=2)

    def test_latency(self):
        d = self.js("latency", "-n", "20", "-i", "0")
        self.assertEqual(d["samples"], 20)
        self.assertLessEqual(d["min_ms"], d["avg_ms"])
        self.assertLessEqual(d["avg_ms"], d["max_ms"])
        self.assertLessEqual(d["p50_ms"], d["p99_ms"])
        self.assertLessEqual(d["p99_ms"], d["max_ms"])
        text = run("latency", "-n", "5", "-i", "1", token=ADMIN, url=self.url).stdout
        self.assertRegex(text, r"min: [\d.]+, max: [\d.]+, avg: [\d.]+, p50: [\d.]+, "
                               r"p99: [\d.]+ \(5 samples\)")
        self.js("latency", "-n", "0", check=2)

    def test_monitor(self):
        cmd = [HEAPCTL, "--connect", self.url, "--token", ADMIN, "monitor", "-n", "3"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.assertTrue(p.stdout.readline().startswith("OK: every request"))
            run("shell", url=self.url, token=None,
                stdin="alloc a size=3 tag=Mon\nrelease a\necho not a request\nstats\n")
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 3, out)
        self.assertRegex(lines[0], r'^\d+\.\d{6} \[\w+ unix:pid=\d+,uid=\d+,#\d+\] alloc '
                                   r'size=3 tag="Mon" -> OK \(\d+ us\)$')
        self.assertIn("] decref ", lines[1])
        self.assertIn("] heap_stats ", lines[2])
        # --json: one document per record, then the summary.
        cmd = [HEAPCTL, "--connect", self.url, "--token", ADMIN, "--json", "monitor", "-n", "2"]
        start = len(self.d.log())
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.d.wait_log("monitoring every request", start=start)
            run("ping", url=self.url, token=None)
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        docs = [json.loads(l) for l in out.splitlines()]
        self.assertEqual([d.get("op") for d in docs[:2]], ["ping", "goodbye"])
        self.assertEqual((docs[2]["records"], docs[2]["dropped"]), (2, 0))
        self.assertEqual(js("monitor", url=self.url, token=None, check=5)["error"]["name"],
                         "EPERM")

    def test_output_that_cannot_be_written(self):
        with open("/dev/full", "w") as full:
            r = subprocess.run([HEAPCTL, "--connect", self.url, "stats"], stdout=full,
                               stderr=subprocess.PIPE, text=True, timeout=30)
        self.assertEqual(r.returncode, 6, r.stderr)
        self.assertIn("cannot write the output", r.stderr)


class Top(unittest.TestCase):
    """top on a terminal (a pseudo-terminal): keys, and the terminal given back on every way
    out: q, ^C, SIGTERM, the server going away."""

    def spawn(self, *args, url=None):
        """heapctl top in a pty; returns (pid, master fd, the terminal's settings before)."""
        # The child waits until the terminal's settings are read: else heapctl may have made it
        # raw already, and "before" would be raw.
        r, w = os.pipe()
        pid, fd = pty.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os.environ["LINES"] = "40"
            os.execv(HEAPCTL, [HEAPCTL, "--connect", url or "unix:" + SOCK, "--token", ADMIN,
                               "top", "-d", "0.2"] + list(args))
        os.close(r)
        before = termios.tcgetattr(fd)
        os.write(w, b"x")
        os.close(w)
        return pid, fd, before

    def read_until(self, fd, pattern, timeout=20):
        buf = b""
        deadline = time.monotonic() + timeout
        while pattern.encode() not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %r in %r" % (pattern, buf[-500:]))
            r, _, _ = select.select([fd], [], [], left)
            if r:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
        return buf

    def finish(self, pid, fd, before):
        """Waits for heapctl; checks the terminal is as it was; returns the exit status."""
        rest = pty_drain(pid, fd)
        _, status = os.waitpid(pid, 0)
        # The pty pair shares one set of settings: the master reads what heapctl left.
        after = termios.tcgetattr(fd)
        os.close(fd)
        self.assertEqual(after[3] & (termios.ICANON | termios.ECHO),
                         before[3] & (termios.ICANON | termios.ECHO), "terminal left raw")
        self.assertEqual(after, before)
        self.assertIn(b"\033[?1049l", rest)  # back from the alternate screen
        return os.waitstatus_to_exitcode(status)

    def test_keys_and_q(self):
        pid, fd, before = self.spawn()
        out = self.read_until(fd, "Sort: bytes")
        self.assertIn(b"\033[?1049h", out)  # the alternate screen
        self.assertIn(b"REQ/S", out)
        os.write(fd, b"r")
        self.read_until(fd, "Sort: requests")
        os.write(fd, b"n")
        self.read_until(fd, "Sort: name")
        os.write(fd, b"q")
        self.assertEqual(self.finish(pid, fd, before), 0)

    def test_interrupt_and_terminate(self):
        for how in ("\x03", signal.SIGTERM):  # ^C through the terminal, then a signal
            pid, fd, before = self.spawn("--sort", "objects")
            self.read_until(fd, "Sort: objects")
            if isinstance(how, str):
                os.write(fd, how.encode())
            else:
                os.kill(pid, how)
            self.assertEqual(self.finish(pid, fd, before), 0)

    def test_the_server_going_away(self):
        d = h.Daemon({"admin_tokens": [ADMIN], "log_level": "warn"}, tcp=False).start()
        try:
            pid, fd, before = self.spawn(url="unix:" + d.sock_path)
            self.read_until(fd, "Sort: bytes")
            d.signal(signal.SIGTERM)
            d.wait_exit()
            self.assertEqual(self.finish(pid, fd, before), 1)  # ESHUTDOWN: the server said so
        finally:
            d.stop()

    def test_rates_in_json(self):
        docs = jlines("top", "-n", "2", "-d", "0.1", "--sort", "requests", token=ADMIN)
        self.assertEqual(len(docs), 2)
        self.assertEqual(docs[1]["sort"], "requests")
        for key in ("requests_per_s", "alloc_bytes_per_s", "collections_per_s"):
            self.assertIn(key, docs[1]["server"])
            self.assertIn(key, docs[1]["sessions"][0])
        self.assertGreater(docs[1]["server"]["requests_per_s"], 0)  # its own two pipelines
        js("top", "--sort", "frobs", token=ADMIN, check=2)


class ShellTerminal(unittest.TestCase):
    """heapctl shell on a terminal (a pseudo-terminal): libedit's completion and the history
    kept between runs, as a user at a terminal sees them."""

    def setUp(self):
        self.hist = os.path.join(TMP, "history-%s" % self.id().rsplit(".", 1)[-1])
        if os.path.exists(self.hist):
            os.unlink(self.hist)

    def spawn(self):
        pid, fd = pty.fork()
        if pid == 0:
            os.environ.update(TERM="xterm", HEAPCTL_HISTFILE=self.hist, HOME=TMP)
            os.execv(HEAPCTL, [HEAPCTL, "--connect", "unix:" + SOCK, "--token", USER, "shell"])
        return pid, fd

    def read_until(self, fd, pattern, timeout=20):
        return Top.read_until(self, fd, pattern, timeout)

    def type(self, fd, keys, timeout=20):
        """Types keys once libedit reads the terminal: it prints its prompt, then takes the
        terminal out of line mode, and a key typed in between is the line discipline's (a
        ^D there is an end of file that libedit never sees)."""
        deadline = time.monotonic() + timeout
        while termios.tcgetattr(fd)[3] & termios.ICANON:
            if time.monotonic() > deadline:
                raise AssertionError("the terminal stayed in line mode")
            time.sleep(0.01)
        os.write(fd, keys)

    def finish(self, pid, fd):
        """Reads to the end and waits for heapctl; returns its exit status."""
        pty_drain(pid, fd)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        return os.waitstatus_to_exitcode(status)

    def test_completion(self):
        # Each line is typed short and finished by tab: what it then does shows what the tab
        # made of it (the terminal's echo is libedit's redrawing, not the line).
        pid, fd = self.spawn()
        self.read_until(fd, "heapd> ")
        self.type(fd, b"all\tnode size=8\r")  # a command
        self.read_until(fd, "node = 0x")
        self.type(fd, b"refc\tno\t\r")  # a command, then a name of the shell
        self.read_until(fd, "\r\n1\r\nheapd> ")  # refcount node: the shell's one reference
        self.type(fd, b"gc coll\t\r")  # a subcommand
        self.read_until(fd, "collected generation 2")
        self.type(fd, b"quit\r")
        self.assertEqual(self.finish(pid, fd), 0)

    def test_history_between_runs(self):
        pid, fd = self.spawn()
        self.read_until(fd, "heapd> ")
        self.type(fd, b"echo first-run\r")
        self.read_until(fd, "first-run\r\nheapd> ")  # its output, then the next prompt
        self.type(fd, b"\x04")  # ^D ends it
        self.assertEqual(self.finish(pid, fd), 0)
        with open(self.hist) as f:
            self.assertIn("first-run", f.read())  # libedit's format: "echo\\040first-run"
        self.assertEqual(os.stat(self.hist).st_mode & 0o777, 0o600)
        # A second run: the up arrow brings the first run's line back, and it runs again.
        pid, fd = self.spawn()
        self.read_until(fd, "heapd> ")
        self.type(fd, b"\x1b[A")
        self.read_until(fd, "first-run")
        self.type(fd, b"\r")
        self.read_until(fd, "first-run\r\nheapd> ")
        self.type(fd, b"echo x\r")
        self.read_until(fd, "x\r\nheapd> ")
        self.type(fd, b"decref 1\r")  # the last command fails: so does the shell
        self.assertIn(b"ENOOBJ", self.read_until(fd, "heapd> "))
        self.type(fd, b"\x04")
        self.assertEqual(self.finish(pid, fd), 1)


class Install(unittest.TestCase):
    """cmake --install into a temporary prefix, then a program built with pkg-config."""

    def test_install_and_pkg_config(self):
        if not BUILD_DIR:
            self.skipTest("no build directory given")
        prefix = os.path.join(TMP, "prefix")
        subprocess.run(["cmake", "--install", BUILD_DIR, "--prefix", prefix], check=True,
                       capture_output=True, timeout=120)
        self.assertTrue(os.path.exists(os.path.join(prefix, "include/heapd/client.h")))
        self.assertTrue(os.path.exists(os.path.join(prefix, "include/heapd/errors.h")))
        self.assertTrue(os.path.exists(os.path.join(prefix, "include/heapd/stats.h")))
        self.assertTrue(os.path.exists(os.path.join(prefix, "include/heapd/server_stats.h")))
        self.assertTrue(os.path.exists(os.path.join(prefix, "bin/heapctl")))
        pcs = [os.path.join(dp, f) for dp, _, fs in os.walk(prefix) for f in fs
               if f == "heapdclient.pc"]
        self.assertEqual(len(pcs), 1)
        env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(pcs[0]))
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "heapdclient"], env=env,
                               check=True, capture_output=True, text=True).stdout.split()
        src = os.path.join(TMP, "hello.c")
        with open(src, "w") as f:
            f.write(
                '#include <heapd/client.h>\n#include <stdio.h>\n'
                "int main(int argc, char **argv) {\n"
                "    hdc_t *c = hdc_new();\n"
                "    hdc_options_t o;\n"
                "    hdc_options_init(&o);\n"
                f'    o.token = "{USER}";\n'
                "    int rc = hdc_connect(c, argv[1], &o);\n"
                "    uint64_t h = 0;\n"
                "    hdc_alloc_args_t a = {.size = 8};\n"
                "    if (!rc) rc = hdc_alloc(c, &a, &h);\n"
                "    if (!rc) rc = hdc_decref(c, h, 1);\n"
                "    if (!rc) rc = hdc_decref(c, h, 1);\n"
                '    printf("%s %s\\n", hdc_err_name(rc), hdc_errmsg(c));\n'
                "    hdc_free(c);\n"
                "    return rc == HDC_ENOOBJ ? 0 : 1;\n"
                "}\n"
            )
        exe = os.path.join(TMP, "hello")
        cc = os.environ.get("CC", "cc")
        san = os.environ.get("HEAPD_TEST_CFLAGS", "").split()
        subprocess.run([cc, "-std=c11", "-Wall", "-Werror"] + san + [src, "-o", exe] + flags,
                       env=env, check=True, timeout=120)
        libdir = [f[2:] for f in flags if f.startswith("-L")][0]
        r = subprocess.run([exe, "unix:" + SOCK], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, LD_LIBRARY_PATH=libdir))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("ENOOBJ", r.stdout)


def main():
    global HEAPCTL, BUILD_DIR
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    HEAPCTL = os.path.abspath(sys.argv[1])
    if len(sys.argv) > 2:
        BUILD_DIR = os.path.abspath(sys.argv[2])
    start_daemon()
    try:
        prog = unittest.main(argv=[sys.argv[0], "-v"], exit=False)
        ok = prog.result.wasSuccessful()
    finally:
        DAEMON.stop()  # fails if heapd did not exit 0 or a sanitizer spoke
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
