# SPDX-License-Identifier: MIT
"""test_scale.py: three heapd nodes behind a real HAProxy running the shipped
deploy/haproxy/haproxy.cfg, on loopback (issue 18, docs/SCALING.md).

1. 300 sessions connect through the balancer and spread over the three nodes (each serves
   at least 20% of them); each builds a small graph (a container holding a payload object).
2. HAProxy is killed and started again on the same listening socket: every connection
   drops. Every session resumes through the balancer (resume_timeout) and lands on its own
   node, redirected there by EMOVED when the balancer picked another, with every handle
   valid (the graph read back), each exactly one resume.
3. Node 2 is drained (heapctl drain): its /readyz answers 503 and HAProxy marks it down; new
   sessions through the balancer land on nodes 1 and 3 only; its own sessions go on and
   then finish (goodbye), and heapctl drain --wait sees it empty.
4. Node 3 is saved (heapctl save) and killed (SIGKILL): its sessions get a clear error
   (resuming fails, naming the node's URL); node 3 comes back on the same addresses from its
   snapshots and they resume there, handles valid. Sessions on node 1 never notice: no
   error, no resume beyond the one of step 2.
Then the C client (scale_driver, over libheapdclient with resume_ms) goes through a HAProxy
restart the same way.

heapctl --nodes lists the sessions of all three on the way.
"""

import concurrent.futures
import json
import os
import random
import select
import signal
import socket
import subprocess
import threading
import time
import unittest

import harness as h

import heapd

HEAPCTL = os.environ.get("HEAPCTL_BIN", "build/bin/heapctl")
DRIVER = os.environ.get("SCALE_DRIVER", "build/bin/scale_driver")
HAPROXY_CFG = os.path.join(os.environ.get("HEAPD_SOURCE_DIR", "."), "deploy", "haproxy",
                           "haproxy.cfg")
NSESSIONS = 300


def url(d):
    return "tcp://%s:%d" % d.tcp_addr


class Balancer:
    """haproxy -f deploy/haproxy/haproxy.cfg in the foreground, on a listening socket that
    this object holds (so that a restart keeps the address), its log read by a thread."""

    def __init__(self, nodes):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.sock.set_inheritable(True)
        self.url = "tcp://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.env = dict(os.environ, HEAPD_LB_BIND="fd@%d" % self.sock.fileno(),
                        HEAPD_LB_CHECK_MS="100")
        for i, d in enumerate(nodes, 1):
            self.env["HEAPD_NODE%d" % i] = "%s:%d" % d.tcp_addr
            self.env["HEAPD_NODE%d_HTTP" % i] = str(d.http_addr[1])
        self.proc = None
        self.lines = []
        self.cond = threading.Condition()

    def start(self):
        self.proc = subprocess.Popen(["haproxy", "-f", HAPROXY_CFG, "-db"], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, pass_fds=[self.sock.fileno()])
        h.RUNNING.append(self.proc)
        proc = self.proc
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        return self

    def _read(self, proc):
        for raw in proc.stderr:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()

    def wait_line(self, needle, timeout=10.0, start=0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    if needle in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("haproxy never said %r; its log:\n%s"
                                         % (needle, "\n".join(self.lines[-30:])))
                self.cond.wait(min(left, 0.1))

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stderr.close()

    def close(self):
        self.kill()
        self.sock.close()


def heapctl(*args, timeout=60):
    return subprocess.run([HEAPCTL, "--token", "adm"] + list(args), capture_output=True,
                          text=True, timeout=timeout)


class Graph:
    """One session's objects: a container whose slot holds a payload object."""

    def __init__(self, s, i):
        self.s = s
        self.payload = b"session %d" % i
        self.leaf = s.alloc(size=len(self.payload), data=self.payload, tag="Leaf")
        self.box = s.alloc(slots=1, tag="Box%d" % i)
        self.box[0] = self.leaf
        self.tag = "Box%d" % i
        self.node = s.node_id

    def check(self):
        s = self.s
        assert s.info(self.box).tag == self.tag
        assert s.read(self.leaf) == self.payload
        assert s.getrefcount(self.leaf) == 2  # ours and the box's slot
        target = self.box[0]  # a new reference, given back at once (not queued for later)
        assert target.handle == self.leaf.handle
        s.release(target)


@unittest.skipUnless(subprocess.run(["sh", "-c", "command -v haproxy"],
                                    capture_output=True).returncode == 0,
                     "haproxy is not installed (.ci/setup installs it)")
class ScaleTest(unittest.TestCase):
    def setUp(self):
        self.nodes = []
        for i in (1, 2, 3):
            d = h.Daemon({"node_id": "n%d" % i, "workers": 1, "admin_tokens": ["adm"],
                          "http": ["127.0.0.1:0"], "session_linger": "120s",
                          "snapshot_interval": 0, "data_dir": ""})
            d.config["data_dir"] = os.path.join(d.dir, "data")
            d.write_config(d.config)
            self.nodes.append(d.start())
        self.link()
        self.lb = Balancer(self.nodes).start()
        self.sessions = []

    def tearDown(self):
        for s in self.sessions:  # goodbye while the nodes run, without waiting on a dead one
            s._resume_timeout = 0
            try:
                s.close()
            except heapd.Error:
                pass
        self.lb.close()
        for d in self.nodes:
            d.stop()

    def link(self):
        """Every node gets its own URL and everyone's (one list for all, as a ConfigMap)."""
        peers = ["%s=%s" % (d.config["node_id"], url(d)) for d in self.nodes]
        for d in self.nodes:
            mark = len(d.log())
            d.config.update(advertise_url=url(d), peers=peers)
            d.write_config(d.config)
            d.signal(signal.SIGHUP)
            d.wait_log(r"config reloaded", start=mark)

    def by_node(self, graphs):
        out = {"n1": [], "n2": [], "n3": []}
        for g in graphs:
            out[g.node].append(g)
        return out

    def test_three_nodes_behind_haproxy(self):
        n1, n2, n3 = self.nodes
        lb = self.lb
        # 1. Spread.
        graphs = []
        for i in range(NSESSIONS):
            s = heapd.connect(lb.url, resume_timeout=30, client_name="scale-%d" % i)
            self.sessions.append(s)
            graphs.append(Graph(s, i))
        spread = {k: len(v) for k, v in self.by_node(graphs).items()}
        for name, n in spread.items():
            self.assertGreaterEqual(n, NSESSIONS // 5, spread)
        r = heapctl("--json", "--nodes", ",".join(url(d) for d in self.nodes), "sessions")
        self.assertEqual(r.returncode, 0, r.stderr)
        listed = json.loads(r.stdout)
        self.assertEqual({n["node_id"]: n["sessions"] for n in listed["nodes"]}, spread)

        # 2. Every connection drops; every session comes home.
        lb.kill()
        lb.start()
        # In another order than they connected: leastconn, given the same sequence of
        # connections, would send each one home by itself.
        order = list(graphs)
        random.Random(18).shuffle(order)
        for g in order:
            g.check()  # the first request finds the link gone and resumes
            self.assertEqual(g.s.node_id, g.node)
            self.assertEqual(g.s.resumes, 1)
        redirected = sum(g.s.redirects for g in graphs)
        self.assertGreater(redirected, 0)  # leastconn picked another node for some
        for name, n in {k: len(v) for k, v in self.by_node(graphs).items()}.items():
            r = heapctl("-c", url(self.nodes[int(name[1]) - 1]), "--json", "server")
            self.assertEqual(json.loads(r.stdout)["server"]["sessions"] - 1, n)  # its own aside

        # 3. Drain node 2.
        mark = len(lb.lines)
        r = heapctl("-c", url(n2), "drain")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(n2.http_get("/readyz")[0], 503)
        lb.wait_line("heapd-2 is DOWN", start=mark)
        fresh = [heapd.connect(lb.url) for _ in range(30)]
        self.sessions += fresh
        self.assertEqual(sorted({s.node_id for s in fresh}), ["n1", "n3"])
        for s in fresh:
            s.close()
        on = self.by_node(graphs)
        for g in on["n2"]:
            g.check()  # its sessions go on ...
            g.s.close()  # ... and finish
        r = heapctl("-c", url(n2), "drain", "--wait", "10")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("0 sessions left", r.stdout)

        # 4. Node 3 saved, then killed.
        r = heapctl("-c", url(n3), "save")
        self.assertEqual(r.returncode, 0, r.stderr)
        n3_addr, n3_http = n3.tcp_addr, n3.http_addr
        mark = len(lb.lines)
        n3.signal(signal.SIGKILL)
        n3.wait_exit()
        # Until its health check fails, HAProxy may still pick node 3 (leastconn: it has no
        # connection left) and close the client's connection when it cannot reach it.
        lb.wait_line("heapd-3 is DOWN", start=mark)
        for g in on["n3"]:
            g.s._resume_timeout = 1.0  # fail fast: the node is gone for now
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            errors = list(pool.map(self.lost, on["n3"]))
        for e in errors:
            self.assertIsInstance(e, heapd.ConnectionClosed)
            self.assertIn("resuming failed", str(e))
            self.assertIn("%s:%d" % n3_addr, str(e))  # names the session's node
        for g in on["n1"]:
            g.check()
            self.assertEqual(g.s.resumes, 1)  # never noticed
        # Node 3 comes back where it was, from its snapshots.
        n3.config.update(listen=["%s:%d" % n3_addr], http=["%s:%d" % n3_http])
        n3.write_config(n3.config)
        n3.clients = []
        n3.tcp_addr = n3.unix_addr = n3.http_addr = None
        if os.path.exists(os.path.join(n3.dir, "notify.sock")):
            os.unlink(os.path.join(n3.dir, "notify.sock"))
        n3.start()
        for g in on["n3"]:
            g.s.reconnect()  # through the balancer, sent home
            self.assertEqual(g.s.node_id, "n3")
            g.check()
        for g in on["n1"]:
            g.check()
            self.assertEqual(g.s.resumes, 1)

    @staticmethod
    def lost(g):
        try:
            g.s.ping()
        except heapd.Error as exc:
            return exc
        return None

    @unittest.skipUnless(os.path.exists(DRIVER), "scale_driver not built")
    def test_c_client_behind_haproxy(self):
        p = subprocess.Popen([DRIVER, self.lb.url, "60"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            before = [p.stdout.readline().split() for _ in range(60)]
            self.assertEqual(len({b[1] for b in before}), 3, before)  # spread over all three
            self.lb.kill()
            self.lb.start()
            p.stdin.write("go\n")
            p.stdin.flush()
            after = [p.stdout.readline().split() for _ in range(60)]
            out, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 0, err)
            for b, a in zip(before, after):
                self.assertEqual(a[0], b[0])  # the same session ...
                self.assertEqual(a[1], b[1])  # ... on its own node ...
                self.assertEqual(a[2], "ok")  # ... its objects as they were
                self.assertEqual(a[3], "resumes=1")
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()


if __name__ == "__main__":
    unittest.main(verbosity=2)
