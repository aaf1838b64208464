# SPDX-License-Identifier: MIT
"""test_redirect.py: the clients follow a redirect (EMOVED) to the node that owns the session
(docs/SCALING.md): heapd.connect and heapd.asyncio.connect with resume=, Session.reconnect()
and the resume after a drop (resume_timeout), and heapctl (the C client) with --session and
--resume, all given the URL of a node that does not own the session. A chain of redirects
longer than MAX_REDIRECTS stops with heapd.Moved; a lost session is NoSuchSession.

Run once per codec (HEAPD_PYTHON_IMPLEMENTATION): the status's moved_to is decoded by each.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import unittest

import harness as h

import heapd
import heapd.asyncio

HEAPCTL = os.environ.get("HEAPCTL_BIN", "build/bin/heapctl")


def node(name):
    return h.Daemon({"node_id": name, "workers": 1, "admin_tokens": ["adm"]}).start()


def url(d):
    return "tcp://%s:%d" % d.tcp_addr


def reload(d, **changes):
    """Rewrites d's config and reloads it; returns once its one worker has it."""
    mark = len(d.log())
    d.config.update(changes)
    d.write_config(d.config)
    d.signal(signal.SIGHUP)

    # The main thread posts the new config to the worker's inbox before it logs this line,
    # and the worker handles its inbox in order: a connection made after it sees the config.
    d.wait_log(r"config reloaded", start=mark)


class RedirectTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.a, cls.b, cls.c = node("ra"), node("rb"), node("rc")
        peers = ["ra=" + url(cls.a), "rb=" + url(cls.b), "rc=" + url(cls.c)]
        for d in (cls.a, cls.b, cls.c):
            reload(d, advertise_url=url(d), peers=peers)

    @classmethod
    def tearDownClass(cls):
        for d in (cls.a, cls.b, cls.c):
            d.stop()

    def detached(self):
        """A session on node a, with one object, left detached: (id, token, handle)."""
        s = heapd.connect(url(self.a))
        self.assertEqual(s.node_id, "ra")
        r = s.alloc(size=32, tag="Home")
        hid = r.handle
        r.forget()  # the session keeps the reference; the resumed one adopts it
        sid, tok = s.detach()
        return sid, tok, hid

    def test_connect_resume_follows_the_redirect(self):
        sid, tok, hid = self.detached()
        s = heapd.connect(url(self.b), resume=(sid, tok))
        try:
            self.assertTrue(s.resumed)
            self.assertEqual(s.node_id, "ra")
            self.assertEqual(s.node_url, url(self.a))
            self.assertEqual(s.redirects, 1)
            self.assertEqual(s.url, url(self.b))  # the URL given stays: resumes start there
            # The object is there, the reference held.
            self.assertEqual(s.info(s.adopt(hid)).tag, "Home")
            # reconnect() goes through b again and lands on a.
            s.reconnect()
            self.assertEqual(s.node_id, "ra")
            self.assertEqual(s.redirects, 2)
        finally:
            s.close()

    def test_resume_after_a_drop_follows_the_redirect(self):
        s = heapd.connect(url(self.c), resume_timeout=10)
        try:
            # A new session through c stays on c; make it live on a instead by resuming one
            # of a's through c.
            s.close()
            sid, tok, hid = self.detached()
            s = heapd.connect(url(self.c), resume=(sid, tok), resume_timeout=10)
            self.assertEqual(s.node_id, "ra")
            s._sock.shutdown(2)  # the link drops under the session
            s.ping()  # resumed: through c, redirected to a
            self.assertEqual(s.resumes, 1)
            self.assertEqual(s.redirects, 2)
            self.assertEqual(s.node_id, "ra")
        finally:
            s.close()

    def test_asyncio_follows_the_redirect(self):
        sid, tok, hid = self.detached()

        async def run():
            s = await heapd.asyncio.connect(url(self.b), resume=(sid, tok))
            try:
                self.assertTrue(s.resumed)
                self.assertEqual(s.node_id, "ra")
                self.assertEqual(s.redirects, 1)
                await s.ping()
            finally:
                await s.close()
        asyncio.run(run())

    def test_too_many_hops_and_lost_sessions(self):
        # b and c send sessions of node "rz" to each other: a loop the client cuts short.
        reload(self.b, peers=self.b.config["peers"] + ["rz=" + url(self.c)])
        reload(self.c, peers=self.c.config["peers"] + ["rz=" + url(self.b)])
        try:
            with self.assertRaises(heapd.Moved) as cm:
                heapd.connect(url(self.b), resume=("rz.0123456789abcdef", "rz." + "0" * 32))
            self.assertIn(cm.exception.url, (url(self.b), url(self.c)))
            self.assertIn("lives on node rz", str(cm.exception))
        finally:
            reload(self.b, peers=self.b.config["peers"][:3])
            reload(self.c, peers=self.c.config["peers"][:3])
        # A session of a that a no longer has: lost, said by a after the redirect.
        with self.assertRaises(heapd.NoSuchSession) as cm:
            heapd.connect(url(self.b), resume=("ra.0123456789abcdef", "ra." + "0" * 32))
        self.assertIn("session lost: node ra has no session", str(cm.exception))

    def test_heapctl_follows_the_redirect(self):
        sid, tok, hid = self.detached()
        r = subprocess.run([HEAPCTL, "--connect", url(self.c), "--session", sid, "--resume", tok,
                            "--keep", "--json", "stats"], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('"objects": 1', r.stdout.replace('"objects":1', '"objects": 1'))
        # And a lost one says so.
        r = subprocess.run([HEAPCTL, "--connect", url(self.c), "--session", "ra.0123456789abcdef",
                            "--resume", "ra." + "0" * 32, "ping"], capture_output=True,
                           text=True, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("session lost: node ra has no session", r.stderr)


def heapctl(*args, timeout=30):
    return subprocess.run([HEAPCTL, "--token", "adm"] + list(args), capture_output=True,
                          text=True, timeout=timeout)


class HeapctlClusterTest(unittest.TestCase):
    """heapctl --nodes a,b,c sessions and heapctl drain."""

    @classmethod
    def setUpClass(cls):
        cls.a, cls.b = node("ha"), node("hb")
        peers = ["ha=" + url(cls.a), "hb=" + url(cls.b)]
        for d in (cls.a, cls.b):
            reload(d, advertise_url=url(d), peers=peers)

    @classmethod
    def tearDownClass(cls):
        for d in (cls.a, cls.b):
            d.stop()

    def test_sessions_of_every_node(self):
        on_a = [heapd.connect(url(self.a), client_name="on-a") for _ in range(2)]
        on_b = [heapd.connect(url(self.b), client_name="on-b")]
        try:
            nodes = url(self.a) + "," + url(self.b)
            r = heapctl("--nodes", nodes, "sessions")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("# node ha (%s): 2 sessions" % url(self.a), r.stdout)
            self.assertIn("# node hb (%s): 1 session" % url(self.b), r.stdout)
            for s in on_a + on_b:
                self.assertIn(s.session_id, r.stdout)
            r = heapctl("--json", "--nodes", nodes, "sessions")
            self.assertEqual(r.returncode, 0, r.stderr)
            doc = json.loads(r.stdout)
            self.assertEqual([(n["node_id"], n["sessions"]) for n in doc["nodes"]],
                             [("ha", 2), ("hb", 1)])
            self.assertEqual(sorted(e["id"] for e in doc["sessions"]),
                             sorted(s.session_id for s in on_a + on_b))
            self.assertEqual(doc["total"], 3)
            # A node that does not answer is named, the others still shown, and it fails.
            with socket.socket() as free:
                free.bind(("127.0.0.1", 0))
                dead = "tcp://127.0.0.1:%d" % free.getsockname()[1]
                r = heapctl("--nodes", nodes + "," + dead, "sessions")
            self.assertEqual(r.returncode, 3, r.stderr)
            self.assertIn("# node hb", r.stdout)
            self.assertIn("node %s: cannot connect" % dead, r.stderr)
            # --nodes is for sessions.
            r = heapctl("--nodes", nodes, "server")
            self.assertEqual(r.returncode, 2)
            self.assertIn("--nodes works with sessions only", r.stderr)
        finally:
            for s in on_a + on_b:
                s.close()

    def test_commands_about_another_nodes_session_follow_it(self):
        s = heapd.connect(url(self.a), client_name="far")
        try:
            s.alloc(size=8)
            sid = s.session_id
            # --session ID (session_op), inspect ID (session_report), kill ID, all sent to b.
            r = heapctl("-c", url(self.b), "--json", "--session", sid, "stats")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout)["heap"]["objects"], 1)
            r = heapctl("-c", url(self.b), "--json", "inspect", sid)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout)["session"]["client_name"], "far")
            r = heapctl("-c", url(self.b), "kill", sid)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("killed session " + sid, r.stdout)
            with self.assertRaises(heapd.NoSuchSession):
                s.ping()
            # Gone now: its node says so.
            r = heapctl("-c", url(self.b), "kill", sid)
            self.assertEqual(r.returncode, 1)
            self.assertIn("session lost: node ha has no session", r.stderr)
        finally:
            s._resume_timeout = 0
            try:
                s.close()
            except heapd.Error:
                pass

    def test_drain(self):
        kept = heapd.connect(url(self.b), client_name="kept")
        try:
            r = heapctl("-c", url(self.b), "drain")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("node hb draining: no new session; 1 session left (1 attached)",
                          r.stdout)
            # A new session through b lands on a; the one on b goes on.
            s = heapd.connect(url(self.b))
            self.assertEqual(s.node_id, "ha")
            self.assertEqual(s.redirects, 1)
            s.close()
            kept.ping()
            r = heapctl("-c", url(self.b), "drain", "--wait", "0")
            self.assertEqual(r.returncode, 4)
            self.assertIn("node hb still holds 1 session", r.stderr)
            kept.close()
            r = heapctl("-c", url(self.b), "--json", "drain", "--wait", "10")
            self.assertEqual(r.returncode, 0, r.stderr)
            doc = json.loads(r.stdout)
            self.assertEqual((doc["node_id"], doc["draining"], doc["sessions"]), ("hb", True, 0))
            r = heapctl("-c", url(self.b), "drain", "--cancel")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("node hb takes new sessions again", r.stdout)
            with heapd.connect(url(self.b)) as back:
                self.assertEqual(back.node_id, "hb")
            r = heapctl("-c", url(self.b), "drain", "--wait")
            self.assertEqual(r.returncode, 2)
        finally:
            heapctl("-c", url(self.b), "drain", "--cancel")
            kept.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
