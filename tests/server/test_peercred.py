# SPDX-License-Identifier: MIT
"""test_peercred.py: admin by the peer credentials of the Unix socket (admin_peer_uids).

A Unix socket peer whose uid is root's, heapd's own or one of admin_peer_uids is an admin
without a token, even when tokens are required; "off" turns that off; a TCP peer never is.
The tests run as root: a client of another uid (nobody) is a forked child that drops its
privileges before it connects, and heapctl run through setpriv(1).
"""

import json
import os
import pwd
import shutil
import signal
import subprocess
import unittest

import harness as h

USER, ADMIN = "user-token", "admin-token"
NOBODY = pwd.getpwnam("nobody").pw_uid
HEAPCTL = os.path.join(os.path.dirname(h.HEAPD_BIN), "heapctl")


def daemon(**cfg):
    config = {"tokens": [USER], "admin_tokens": [ADMIN], "unix_socket_mode": "0666",
              "admin_peer_uids": []}
    config.update(cfg)
    d = h.Daemon(config).start()
    os.chmod(d.dir, 0o755)  # so that nobody reaches the socket
    return d


def as_uid(uid, fn):
    """Runs fn() in a child that has become uid (and its group, no others); returns what fn
    returned (JSON-able), or raises with the child's error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = {"ok": fn()}
        except BaseException as e:  # noqa: B902  (everything goes back to the parent)
            out = {"error": repr(e)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    got = json.loads(data)
    if "error" in got:
        raise AssertionError("child as uid %d: %s" % (uid, got["error"]))
    return got["ok"]


def hello_and_admin(addr, **hello):
    """In the child: hello, then server_stats; (hello status, admin flag, server_stats status)."""
    with h.Client(addr) as c:
        r = c.hello(**hello)
        if r.status.code != 0:
            return [r.status.name, None, None]
        return ["OK", r.hello.admin, c.call("server_stats").status.name]


class PeerCredTest(unittest.TestCase):
    def test_root_is_an_admin_on_the_unix_socket_only(self):
        with daemon() as d:
            c = d.session()  # no token, though tokens are required
            self.assertTrue(c.hello_result.admin)
            self.assertEqual(c.call("server_stats").status.name, "OK")
            self.assertTrue(d.session(token=USER).hello_result.admin)
            d.wait_log(r"created, admin by its peer credentials")
            # A wrong token is still a mistake worth refusing.
            with d.connect() as bad:
                self.assertEqual(bad.hello(token="wrong").status.name, "EAUTH")
            # TCP: only tokens count.
            with h.Client(d.tcp_addr) as t:
                self.assertEqual(t.hello().status.name, "EAUTH")
            with h.Client(d.tcp_addr) as t:
                self.assertFalse(t.hello(token=USER).hello.admin)
                self.assertEqual(t.call("server_stats").status.name, "EPERM")
            with h.Client(d.tcp_addr) as t:
                self.assertTrue(t.hello(token=ADMIN).hello.admin)

    def test_another_uid_is_refused(self):
        with daemon() as d:
            addr = d.unix_addr
            self.assertEqual(as_uid(NOBODY, lambda: hello_and_admin(addr)),
                             ["EAUTH", None, None])
            self.assertEqual(as_uid(NOBODY, lambda: hello_and_admin(addr, token=USER)),
                             ["OK", False, "EPERM"])
            self.assertEqual(as_uid(NOBODY, lambda: hello_and_admin(addr, token=ADMIN)),
                             ["OK", True, "OK"])
            d.wait_log(r"uid=%d,.*session \w+ created \(client" % NOBODY)

    def test_heapctl_as_another_uid(self):
        if not shutil.which("setpriv"):
            self.skipTest("no setpriv(1)")
        with daemon() as d:
            def heapctl(*args, uid=None):
                cmd = [HEAPCTL, "--connect", "unix:" + d.sock_path, "--json"] + list(args)
                if uid is not None:
                    cmd = ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid,
                           "--clear-groups"] + cmd
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
                return r.returncode, json.loads(r.stdout)
            code, doc = heapctl("server")
            self.assertEqual(code, 0, doc)
            self.assertGreaterEqual(doc["server"]["sessions"], 1)
            code, doc = heapctl("--token", USER, "server", uid=NOBODY)
            self.assertEqual((code, doc["error"]["name"]), (5, "EPERM"))
            code, doc = heapctl("--token", USER, "ping", uid=NOBODY)
            self.assertEqual(code, 0)
            self.assertFalse(doc["admin"])

    def test_the_daemons_own_uid(self):
        """heapd run as nobody: nobody's peers are admins, root's too, another uid's not."""
        if not shutil.which("setpriv"):
            self.skipTest("no setpriv(1)")
        other = pwd.getpwnam("daemon").pw_uid
        d = h.Daemon({"tokens": [USER], "unix_socket_mode": "0666", "admin_peer_uids": []},
                     tcp=False, env={"NOTIFY_SOCKET": ""})  # readiness from its log line
        d.args = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
                  h.HEAPD_BIN, "--config", d.config_path]
        os.chmod(d.dir, 0o777)  # heapd, as nobody, makes its socket there
        with d.start():
            addr = d.unix_addr
            self.assertEqual(as_uid(NOBODY, lambda: hello_and_admin(addr)), ["OK", True, "OK"])
            self.assertEqual(as_uid(other, lambda: hello_and_admin(addr, token=USER)),
                             ["OK", False, "EPERM"])
            self.assertTrue(d.session().hello_result.admin)

    def test_admin_peer_uids_adds_uids_and_names(self):
        for uids in ([NOBODY], ["nobody"]):
            with daemon(admin_peer_uids=uids) as d:
                addr = d.unix_addr
                self.assertEqual(as_uid(NOBODY, lambda: hello_and_admin(addr)),
                                 ["OK", True, "OK"])
                self.assertTrue(d.session().hello_result.admin)  # root still is

    def test_off(self):
        with daemon(admin_peer_uids="off") as d:
            with d.connect() as c:
                self.assertEqual(c.hello().status.name, "EAUTH")
            c = d.session(token=USER)
            self.assertFalse(c.hello_result.admin)
            self.assertEqual(c.call("server_stats").status.name, "EPERM")
            self.assertTrue(d.session(token=ADMIN).hello_result.admin)
            # Reloadable: back on for the next hello.
            cfg = dict(d.config, admin_peer_uids=[])
            d.write_config(cfg)
            d.signal(signal.SIGHUP)
            d.wait_log(r"config reload: admin_peer_uids: off -> \[\]")
            self.assertTrue(d.session().hello_result.admin)
            self.assertFalse(c.ok("ping") is None)
            self.assertEqual(c.call("server_stats").status.name, "EPERM")  # hellos decide

    def test_bad_values_are_config_errors(self):
        for value, why in (('["no-such-user-hopefully"]', "neither a uid nor a user name"),
                           ("maybe", "expected a list of uids"), ("[-1]", "neither a uid")):
            path = os.path.join(h.tempfile.gettempdir(), "heapd-peercred-%d.yaml" % os.getpid())
            with open(path, "w") as f:
                f.write("admin_peer_uids: %s\n" % value)
            r = subprocess.run([h.HEAPD_BIN, "--check-config", path], capture_output=True,
                               text=True, timeout=30)
            os.unlink(path)
            self.assertEqual(r.returncode, 78, value)
            self.assertIn(why, r.stderr)
            self.assertIn(":1:", r.stderr)


if __name__ == "__main__":
    h.main()
