# SPDX-License-Identifier: MIT
"""test_cluster.py: several heapd nodes, each knowing the others only from its config
(docs/SCALING.md).

Session ids and resume tokens name their node; a resume that reaches another node is
answered EMOVED with the owner's URL in Status.moved_to (as Redis Cluster's MOVED) and the
connection closed; a session whose node cannot be reached or has forgotten it is "session
lost" (ENOSESSION). The drain op stops a node taking new sessions (/readyz 503, new hellos
sent to a peer) while its own sessions go on and can still be resumed there.
"""

import os
import shutil
import signal
import subprocess

import harness as h

EMOVED = 34
ENOSESSION = 25
ESHUTDOWN = 29
EPERM = 24


def node(name, **extra):
    cfg = {"node_id": name, "workers": 1, "admin_tokens": ["adm"], "http": ["127.0.0.1:0"]}
    cfg.update(extra)
    return h.Daemon(cfg)


def url(d):
    return "tcp://%s:%d" % d.tcp_addr


def set_config(d, **changes):
    """Rewrites d's config with changes and reloads it; returns once its worker has it (the
    cluster section of server_info, which its one worker answers from its own copy)."""
    d.config.update(changes)
    d.write_config(d.config)
    d.signal(signal.SIGHUP)
    want = len(d.config.get("peers", []))

    def applied():
        with d.connect() as c:
            c.hello(token="adm")
            fields = info(c, "cluster")
            c.ok("goodbye")
            return fields["peers"] == want and fields["advertise_url"] == \
                d.config.get("advertise_url", "")
    assert h.wait_until(applied, 10), "reload not applied"


def info(c, section):
    r = c.ok("server_info", section=section)
    out = {}
    for s in r.sections:
        for f in s.fields:
            out[f.key] = getattr(f, f.WhichOneof("value"))
    return out


def resume(d, hr):
    """A client that resumed hr's session on d, once d has seen its old connection go."""
    def attempt():
        c = h.Client(d.tcp_addr)
        r = c.hello(session_id=hr.session_id, resume_token=hr.resume_token)
        if r.status.code == 0:
            return c
        c.close()
        assert r.status.code == 30, r.status.message  # EBUSY: not yet
    c = h.wait_until(attempt)
    assert c, "not resumed"
    d.clients.append(c)
    return c


def restart(d):
    """Starts d again after it exited (the harness binds a fresh notify socket)."""
    d.tcp_addr = d.unix_addr = d.http_addr = None
    notify = os.path.join(d.dir, "notify.sock")
    if os.path.exists(notify):
        os.unlink(notify)
    d.start()


def link(*nodes):
    """Every node learns every node's URL (itself included, as one shared list would)."""
    peers = ["%s=%s" % (d.config["node_id"], url(d)) for d in nodes]
    for d in nodes:
        set_config(d, advertise_url=url(d), peers=peers)


class IdsTest(h.unittest.TestCase):
    def test_ids_and_tokens_name_their_node(self):
        with node("n-1_a") as d:
            c = d.session()
            hr = c.hello_result
            self.assertTrue(hr.session_id.startswith("n-1_a."), hr.session_id)
            self.assertRegex(hr.session_id, r"^n-1_a\.[0-9a-f]{16}$")
            self.assertRegex(hr.resume_token, r"^n-1_a\.[0-9a-f]{32}$")
            self.assertEqual(hr.node_id, "n-1_a")
            h_ = c.alloc(size=8)
            c.close()
            c2 = resume(d, hr)
            self.assertTrue(c2.hello_result.resumed)
            self.assertEqual(c2.ok("getrefcount", handle=h_).value, 1)

    def test_without_node_id_ids_are_bare(self):
        with h.Daemon() as d:
            hr = d.session().hello_result
            self.assertRegex(hr.session_id, r"^[0-9a-f]{16}$")
            self.assertEqual(hr.node_id, "")

    def test_hostname_node_id(self):
        with node("@hostname") as d:
            hr = d.session().hello_result
            want = os.uname().nodename.split(".")[0][:32]
            self.assertEqual(hr.node_id, "".join(
                ch if ch.isalnum() or ch in "-_" else "-" for ch in want))
            self.assertTrue(hr.session_id.startswith(hr.node_id + "."))

    def test_bad_cluster_config_is_refused(self):
        cases = [
            ('node_id: "has space"\n', "a node id is 1 to 32 characters"),
            ('node_id: "' + "x" * 33 + '"\n', "longer than 32 bytes"),
            ('advertise_url: "http://x:1"\n', "expected tcp://host:port"),
            ('peer_url: "tcp://x:1"\n', "must hold {node_id}"),
            ('peers: ["n1"]\n', "expected NODE=URL"),
            ('peers: ["n1="]\n', "the URL is missing"),
            ('peers: ["n 1=tcp://x:1"]\n', "expected NODE=URL"),
        ]
        d = h.Daemon()
        try:
            for text, message in cases:
                path = os.path.join(d.dir, "bad.yaml")
                with open(path, "w") as f:
                    f.write(text)
                r = subprocess.run([h.HEAPD_BIN, "--check-config", path], capture_output=True,
                                   text=True)
                self.assertEqual(r.returncode, 78, text)
                self.assertIn(message, r.stderr, text)
        finally:
            d.stop()


class RedirectTest(h.unittest.TestCase):
    def setUp(self):
        self.a = node("na").start()
        self.b = node("nb").start()
        link(self.a, self.b)

    def tearDown(self):
        self.assertEqual(self.a.stop(), 0)
        self.assertEqual(self.b.stop(), 0)

    def test_resume_on_another_node_is_moved_to_the_owner(self):
        c = self.a.session()
        hr = c.hello_result
        obj = c.alloc(size=16, slots=1)
        c.close()
        other = self.b.connect()
        r = other.hello(session_id=hr.session_id, resume_token=hr.resume_token)
        self.assertEqual(r.status.code, EMOVED)
        self.assertEqual(r.status.name, "EMOVED")
        self.assertEqual(r.status.moved_to, url(self.a))
        self.assertIn("lives on node na", r.status.message)
        self.assertEqual(other.expect_closed(), [])
        # The redirect is logged on one line, and counted as a refusal of reason "moved".
        self.b.wait_log(r"hello redirected: session na\.")
        # Following it resumes the session with its heap as it was.
        c2 = resume(self.a, hr)
        self.assertTrue(c2.hello_result.resumed)
        self.assertEqual(c2.hello_result.node_id, "na")
        self.assertEqual(c2.ok("obj_info", handle=obj).size, 16)
        # A wrong token gets no further than the redirect: the owner checks it.
        r = self.b.connect().hello(session_id=hr.session_id, resume_token="na." + "0" * 32)
        self.assertEqual(r.status.code, EMOVED)

    def test_admin_ops_about_another_nodes_session_are_moved(self):
        hr = self.a.session().hello_result
        adm = self.b.session(token="adm")
        inner = h.make_request(0, "heap_stats")
        for op in ("session_report", "kill_session", "session_op"):
            if op == "session_op":  # its field "op" is the call's own parameter's name
                adm.send_request(h.pb.Request(id=99, session_op=h.pb.SessionOp(
                    session_id=hr.session_id, op=inner)))
                r = adm.recv_response()
            else:
                r = adm.call(op, session_id=hr.session_id)
            self.assertEqual(r.status.code, EMOVED, op)
            self.assertEqual(r.status.moved_to, url(self.a), op)
            self.assertIn("lives on node na", r.status.message, op)
        # The connection goes on; an id of this node that it does not have is lost.
        r = adm.call("kill_session", session_id="nb.0123456789abcdef")
        self.assertEqual(r.status.code, ENOSESSION)
        self.assertIn("session lost: node nb has no session", r.status.message)

    def test_peer_url_template(self):
        # b knows a only by the template: a's Unix socket, named after its node id.
        sock_dir = os.path.dirname(self.a.sock_path)
        tmpl = "unix:" + os.path.join(sock_dir, "{node_id}.sock")
        os.symlink(self.a.sock_path, os.path.join(sock_dir, "na.sock"))
        set_config(self.b, peers=[], peer_url=tmpl)
        hr = self.a.session().hello_result
        r = self.b.connect().hello(session_id=hr.session_id, resume_token=hr.resume_token)
        self.assertEqual(r.status.code, EMOVED)
        self.assertEqual(r.status.moved_to, "unix:" + os.path.join(sock_dir, "na.sock"))

    def test_lost_sessions_say_so(self):
        # An id of this node that it does not have (a node restarted without its snapshot).
        r = self.a.connect().hello(session_id="na.0123456789abcdef",
                                   resume_token="na." + "0" * 32)
        self.assertEqual(r.status.code, ENOSESSION)
        self.assertIn("session lost: node na has no session na.0123456789abcdef",
                      r.status.message)
        self.assertEqual(r.status.moved_to, "")
        # An id of a node nobody knows.
        r = self.a.connect().hello(session_id="nz.0123456789abcdef",
                                   resume_token="nz." + "0" * 32)
        self.assertEqual(r.status.code, ENOSESSION)
        self.assertIn("lives on node nz, which this node cannot send you to", r.status.message)
        # A peers entry pointing back at this very node is not followed (no loop).
        set_config(self.a, peers=["na=" + url(self.a), "nz=" + url(self.a)])
        r = self.a.connect().hello(session_id="nz.0123456789abcdef",
                                   resume_token="nz." + "0" * 32)
        self.assertEqual(r.status.code, ENOSESSION)

    def test_drain(self):
        admin = self.a.session(token="adm")
        kept = self.a.session()
        obj = kept.alloc(size=8)
        left = self.a.session()
        lhr = left.hello_result
        left.close()
        self.assertEqual(self.a.http_get("/readyz")[0], 200)
        # Not for users.
        self.assertEqual(kept.call("drain").status.code, EPERM)
        r = admin.ok("drain")
        self.assertTrue(r.draining)
        self.assertEqual(r.node_id, "na")
        self.assertEqual(r.sessions, 3)
        self.assertEqual(r.sessions_attached, 2)
        status, _, body = self.a.http_get("/readyz")
        self.assertEqual(status, 503)
        self.assertIn(b"draining", body)
        self.assertEqual(info(admin, "cluster")["draining"], 1)
        # A new session is sent to the peer; the peer takes it.
        n = self.a.connect()
        r = n.hello()
        self.assertEqual(r.status.code, EMOVED)
        self.assertEqual(r.status.moved_to, url(self.b))
        self.assertIn("node na is draining", r.status.message)
        self.assertEqual(self.b.session().hello_result.node_id, "nb")
        # An admin still gets a session there: operators must reach a draining node.
        self.assertEqual(self.a.session(token="adm").hello_result.node_id, "na")
        # Its own sessions go on, and a detached one is resumed there as ever.
        self.assertEqual(kept.ok("getrefcount", handle=obj).value, 1)
        self.assertTrue(resume(self.a, lhr).hello_result.resumed)
        # Cancelled: ready again, new sessions taken.
        self.assertFalse(admin.ok("drain", cancel=True).draining)
        self.assertEqual(self.a.http_get("/readyz")[0], 200)
        self.assertEqual(self.a.session().hello_result.node_id, "na")

    def test_drain_without_peers(self):
        set_config(self.a, peers=[])
        admin = self.a.session(token="adm")
        admin.ok("drain")
        r = self.a.connect().hello()
        self.assertEqual(r.status.code, ESHUTDOWN)
        self.assertIn("draining", r.status.message)


def with_data_dir(d):
    """d (not started) with a data_dir of its own; returns d."""
    d.config["data_dir"] = os.path.join(d.dir, "data")
    d.write_config(d.config)
    return d


def saved_session(d, size):
    """Starts d, leaves a session holding one object of size bytes and stops d with SIGTERM,
    which saves the session to d's data_dir; returns (its hello result, the object's handle)."""
    d.start()
    c = d.session()
    hr = c.hello_result
    obj = c.alloc(size=size)
    c.close()
    d.clients = []
    d.signal(signal.SIGTERM)
    code = d.wait_exit()
    if code != 0:
        raise AssertionError(f"{d.config['node_id']} exited with {code} on SIGTERM")
    return hr, obj


class RestoreTest(h.unittest.TestCase):
    def test_node_named_sessions_come_back_from_snapshots(self):
        d = with_data_dir(node("nr"))
        hr, obj = saved_session(d, 24)
        self.assertTrue(os.path.exists(os.path.join(d.config["data_dir"],
                                                    hr.session_id + ".snap")))
        restart(d)
        try:
            c = d.connect()
            r = c.hello(session_id=hr.session_id, resume_token=hr.resume_token)
            self.assertEqual(r.status.code, 0, r.status.message)
            self.assertEqual(c.ok("obj_info", handle=obj).size, 24)
        finally:
            d.stop()

    def test_a_lost_nodes_snapshots_handed_to_another_node(self):
        """docs/SCALING.md, "Losing a node": its files copied into another node's data_dir,
        and the peers entry for it pointed at that node."""
        lost = with_data_dir(node("gone"))
        hr, obj = saved_session(lost, 40)
        heir = with_data_dir(node("heir"))
        os.makedirs(heir.config["data_dir"], mode=0o700)
        name = hr.session_id + ".snap"
        shutil.copy(os.path.join(lost.config["data_dir"], name),
                    os.path.join(heir.config["data_dir"], name))
        lost.stop()
        heir.start()
        other = node("other").start()
        try:
            set_config(other, peers=["gone=" + url(heir)])
            r = other.connect().hello(session_id=hr.session_id, resume_token=hr.resume_token)
            self.assertEqual(r.status.code, EMOVED)
            self.assertEqual(r.status.moved_to, url(heir))
            c = resume(heir, hr)
            self.assertEqual(c.hello_result.node_id, "heir")
            self.assertEqual(c.ok("obj_info", handle=obj).size, 40)
        finally:
            other.stop()
            heir.stop()


if __name__ == "__main__":
    h.main()
