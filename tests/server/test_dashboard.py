# SPDX-License-Identifier: MIT
"""test_dashboard.py: the dashboard in a real browser, against a live heapd under load.

Debian's chromium runs headless (a fresh profile, no network but loopback) on the overview
and on a session's page while three sessions work: one holds a heap of tagged objects, two
keep allocating, freeing and collecting. For each page it takes a screenshot (kept in
<build>/test-artifacts/ for people to look at) and dumps the DOM after a few seconds of
the page's own polling, and the test checks there that the charts and the heap map were
drawn, with the figures heapd's JSON gives: points on the memory chart, the session count,
marks on the collection timeline, the sessions table largest first, the heap map's arenas
and pools, the tags.
"""

import html.parser
import json
import os
import shutil
import subprocess
import tempfile
import threading

import harness as h

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = os.path.join(os.environ.get("HEAPD_BUILD_DIR", "."), "test-artifacts")


class Dom(html.parser.HTMLParser):
    """Elements by id: their attributes, and the text inside them."""

    def __init__(self, text):
        super().__init__()
        self.by_id, self.stack = {}, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        a["_tag"], a["_text"] = tag, ""
        if tag not in ("br", "input", "img", "meta", "link"):
            self.stack.append(a)
        if "id" in a:
            self.by_id[a["id"]] = a

    def handle_endtag(self, tag):
        if self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for a in self.stack:
            a["_text"] += data


def chromium(url, *args):
    profile = tempfile.mkdtemp(prefix="heapd-chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--user-data-dir=" + profile, "--window-size=1280,1100",
             "--hide-scrollbars", "--virtual-time-budget=4000", *args, url],
            capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Load(threading.Thread):
    """A session allocating, linking, freeing and collecting until stopped."""

    def __init__(self, d):
        super().__init__(daemon=True)
        self.s = d.session(client_name="load")
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            hs = [self.s.alloc(size=40, slots=1, tag="Tmp") for _ in range(200)]
            for a, b in zip(hs, hs[1:] + hs[:1]):
                self.s.ok("set_slot", handle=a, index=0, target=b)
            for x in hs:
                self.s.ok("decref", handle=x)
            self.s.ok("gc_collect", generation=len(hs) % 3)


class DashboardTest(h.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # A node among several: its session ids begin with "dash-1." (docs/SCALING.md).
        cls.d = h.Daemon({"http": ["127.0.0.1:0"], "http_admin_open": True,
                          "node_id": "dash-1"}).start()
        os.makedirs(ARTIFACTS, exist_ok=True)
        # The heap to look at: 30,000 tagged objects over several arenas, from two sites.
        cls.big = cls.d.session(client_name="big")
        for i in range(30000):
            cls.big.send("alloc", size=64 + (i % 7) * 32, slots=i % 3, tag=("Node", "Leaf")[i % 2],
                         site="app.py:%d" % (10 + i % 3))
        for i in range(30000):
            assert cls.big.recv_response().status.code == 0
        cls.loads = [Load(cls.d), Load(cls.d)]
        for t in cls.loads:
            t.start()
        # Charts need a few seconds of history (one point a second).
        h.wait_until(lambda: len(cls.api("/api/overview")["history"]) >= 4, timeout=15)

    @classmethod
    def tearDownClass(cls):
        for t in cls.loads:
            t.stop.set()
        for t in cls.loads:
            t.join(10)
        cls.d.stop()

    @classmethod
    def api(cls, path):
        status, _, body = cls.d.http_get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def url(self, frag=""):
        return "http://%s:%d/%s" % (self.d.http_addr[0], self.d.http_addr[1], frag)

    def look(self, frag, name):
        shot = os.path.join(ARTIFACTS, name + ".png")
        r = chromium(self.url(frag), "--screenshot=" + shot)
        self.assertEqual(r.returncode, 0, r.stderr.decode()[-2000:])
        with open(shot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        r = chromium(self.url(frag), "--dump-dom")
        self.assertEqual(r.returncode, 0, r.stderr.decode()[-2000:])
        return Dom(r.stdout.decode())

    def test_overview(self):
        dom = self.look("", "dashboard-overview").by_id
        o = self.api("/api/overview")
        mem = dom["chart-memory"]
        self.assertGreaterEqual(int(mem["data-points"]), 4)
        self.assertGreater(int(mem["data-last"]), 0)
        # The memory chart's last point is a figure the server published (object bytes
        # change under load, within the load's own few hundred objects).
        hist = [p["object_bytes"] for p in o["history"]]
        self.assertLessEqual(abs(int(mem["data-last"]) - hist[-1]), 200 * 160 * 4)
        self.assertEqual(int(dom["chart-sessions"]["data-last"]), 3)
        self.assertEqual(dom["sessions-now"]["data-value"], "3")
        self.assertGreater(int(dom["chart-requests"]["data-last"]), 0)
        self.assertGreater(int(dom["chart-gc"]["data-marks"]), 0)
        gens = [int(x) for x in dom["chart-gc"]["data-generations"].split(",")]
        self.assertEqual(len(gens), 3)
        self.assertEqual(dom["sessions"]["data-rows"], "3")
        self.assertIn(self.big.hello_result.session_id, dom["sessions"]["_text"].split("big")[0])
        self.assertIn("heapd " + o["version"], dom["server-line"]["_text"])

    def test_session_page(self):
        sid = self.big.hello_result.session_id
        dom = self.look("#/session/" + sid, "dashboard-session").by_id
        # The page asked for this session's detail; its worker has it within a tick.
        s = h.wait_until(lambda: self.d.http_get("/api/session?id=" + sid)[0] == 200 and
                         self.api("/api/session?id=" + sid))
        self.assertEqual(dom["s-id"]["_text"], sid)
        self.assertNotIn("hidden", dom["s-body"])
        heap = dom["heapmap"]
        self.assertEqual(int(heap["data-arenas"]), s["heap"]["arenas_current"])
        pools = sum(c["pools"] for c in s["classes"])
        self.assertEqual(int(heap["data-pools"]), pools)
        self.assertEqual(int(dom["chart-classes"]["data-classes"]),
                         sum(1 for c in s["classes"] if c["pools"]))
        tags = dom["s-tags"]["_text"]
        self.assertIn("Node", tags)
        self.assertIn("Leaf", tags)
        self.assertIn("app.py:10", dom["s-sites"]["_text"])
        self.assertEqual(dom["s-gc"]["data-rows"], "3")


if __name__ == "__main__":
    h.main()
