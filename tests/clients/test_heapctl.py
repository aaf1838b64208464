#!/usr/bin/python3
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
import subprocess
import sys
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
                       "log_level": "warn"}, tcp=False).start()
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


class Basics(unittest.TestCase):
    def test_ping(self):
        d = js("ping")
        self.assertTrue(d["ok"])
        self.assertEqual(d["command"], "ping")
        self.assertEqual(d["protocol_version"], 1)
        self.assertGreater(d["server_time_unix_ns"], 1_600_000_000 * 10**9)
        self.assertFalse(d["admin"])
        self.assertTrue(d["session_id"])
        self.assertIn("PONG", run("ping").stdout)

    def test_usage(self):
        for args in (["--json"], ["--json", "frobnicate"], ["--json", "alloc", "x"],
                     ["--json", "--session", "s", "ping"], ["--json", "--timeout", "x", "ping"]):
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
                         {"server", "sessions", "kill", "top"})
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
        d = js("ping", token=None, check=5)
        self.assertEqual(d["error"]["name"], "EAUTH")

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
        out = run("stats").stdout
        self.assertIn("class   size   num pools", out)
        self.assertIn("arenas_current", out)
        self.assertIn("generation 2: collections=0", out)


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
        self.assertEqual(js("gc", "threshold", "100", "5")["threshold"], [100, 5, 10])
        self.assertEqual(js("gc", "threshold")["threshold"], [700, 10, 10])  # a new session
        self.assertFalse(js("gc", "disable")["enabled"])
        self.assertTrue(js("gc", "enable")["enabled"])
        d = js("gc", "collect")
        self.assertEqual((d["generation"], d["found"]), (2, 0))
        self.assertEqual(js("gc", "collect", "1")["generation"], 1)
        d = js("gc", "collect", "9", check=1)
        self.assertEqual(d["error"]["name"], "EINVAL")
        self.assertEqual(d["exit"], 1)
        self.assertEqual(js("gc", "freeze")["freeze_count"], 0)
        self.assertEqual(js("gc", "unfreeze")["freeze_count"], 0)
        self.assertEqual(js("gc", "debug", "32")["debug"], 32)
        d = js("gc", "garbage")
        self.assertEqual((d["total"], d["handles"]), (0, []))
        self.assertTrue(js("gc", "garbage-clear")["ok"])
        js("gc", "threshold", "x", check=2)
        self.assertIn("threshold:  700 10 10", run("gc").stdout)


class Trace(unittest.TestCase):
    def test_trace(self):
        d = js("trace")
        self.assertEqual((d["subcommand"], d["tracing"], d["current"]), ("status", False, 0))
        self.assertTrue(js("trace", "start")["tracing"])
        self.assertFalse(js("trace", "stop")["tracing"])
        self.assertFalse(js("trace", "clear")["tracing"])
        self.assertFalse(js("trace", "reset-peak")["tracing"])
        d = js("trace", "snapshot", check=1)
        self.assertEqual(d["error"]["name"], "ENOTRACE")
        d = js("trace", "top", check=1)
        self.assertEqual(d["error"]["name"], "ENOTRACE")
        d = js("trace", "free", "7", check=1)
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
        r = run("shell", stdin=script, json_out=True, check=5)
        docs = [json.loads(l) for l in r.stdout.splitlines()]
        self.assertEqual(len(docs), 10)
        names = [d["error"]["name"] if not d["ok"] else "ok" for d in docs]
        self.assertEqual(names, ["ok", "ERANGE", "usage", "usage", "ENOOBJ", "usage", "usage",
                                 "usage", "EPERM", "ok"])
        self.assertEqual([d.get("exit", 0) for d in docs], [0, 1, 2, 2, 1, 2, 2, 2, 5, 0])
        # The exit code is the last failure's; text errors go to stderr.
        r = run("shell", stdin="decref 1\necho x\n", check=1)
        self.assertIn("ENOOBJ", r.stderr)
        run("shell", stdin="help\nquit\necho never\n", check=0)
        self.assertIn("alloc", run("shell", stdin="help\n").stdout)
        r = run("shell", stdin="", check=0)
        self.assertEqual(r.stdout, "")


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
