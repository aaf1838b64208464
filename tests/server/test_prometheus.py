# SPDX-License-Identifier: MIT
"""test_prometheus.py: a real Prometheus scrapes heapd.

Debian's prometheus server runs on loopback (its web port 0, found from its listening
socket), with a scrape job pointing at heapd's /metrics every second. The test waits until
the target is up and scraped, then asks Prometheus's HTTP API for heapd_sessions (the
sessions the test holds) and for rate() of the alloc counter while the test allocates: what a
dashboard or an alert would ask.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import harness as h

PROMETHEUS = "/usr/bin/prometheus"


def listening_ports(pid):
    """TCP ports process pid listens on, from /proc (its sockets' inodes)."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                    ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


class PrometheusTest(h.unittest.TestCase):
    def setUp(self):
        self.d = h.Daemon({"http": ["127.0.0.1:0"]}).start()
        self.addCleanup(self.d.stop)
        self.dir = tempfile.mkdtemp(prefix="heapd-prom-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        host, port = self.d.http_addr
        cfg = os.path.join(self.dir, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: heapd\n    static_configs:\n"
                    "      - targets: ['%s:%d']\n" % (host, port))
        self.log = open(os.path.join(self.dir, "prometheus.log"), "w+")
        self.prom = subprocess.Popen(
            [PROMETHEUS, "--config.file=" + cfg, "--storage.tsdb.path=" + self.dir + "/data",
             "--web.listen-address=127.0.0.1:0", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.addCleanup(self.stop_prometheus)
        deadline = time.monotonic() + 30
        self.port = None
        while self.port is None:
            self.assertIsNone(self.prom.poll(), "prometheus exited:\n" + self.prom_log())
            self.assertLess(time.monotonic(), deadline, "prometheus never listened")
            ports = listening_ports(self.prom.pid)
            self.port = ports[0] if ports else None
            if self.port is None:
                time.sleep(0.05)  # nothing to ask yet: it has no socket

    def stop_prometheus(self):
        self.prom.terminate()
        try:
            self.prom.wait(10)
        except subprocess.TimeoutExpired:
            self.prom.kill()
            self.prom.wait()
        self.log.close()

    def prom_log(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-3000:]

    def api(self, path, **params):
        url = "http://127.0.0.1:%d/api/v1/%s" % (self.port, path)
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = json.load(r)
        except OSError:
            return None  # not up yet
        self.assertEqual(body["status"], "success", body)
        return body["data"]

    def wait(self, what, pred, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(0.2)  # Prometheus scrapes on its own clock, once a second
        self.fail("%s: not seen in %d s; prometheus log:\n%s" % (what, timeout, self.prom_log()))

    def query(self, expr):
        data = self.api("query", query=expr)
        return [(r["metric"], float(r["value"][1])) for r in data["result"]] if data else []

    def test_prometheus_scrapes_heapd(self):
        sessions = [self.d.session() for _ in range(3)]

        def target_up():
            data = self.api("targets")
            active = data["activeTargets"] if data else []
            return active and active[0]["health"] == "up" and active[0]["lastError"] == ""
        self.wait("the heapd target up", target_up)
        got = self.wait("heapd_sessions == 3",
                        lambda: [v for _, v in self.query("heapd_sessions") if v == 3])
        self.assertEqual(got, [3.0])

        # rate() over scrapes taken while the test allocates.
        def allocating_rate():
            for s in sessions:
                for _ in range(50):
                    s.alloc(size=16)
            r = self.query('rate(heapd_requests_total{op="alloc"}[5s])')
            return [v for m, v in r if v > 0 and m.get("job") == "heapd"]
        rate = self.wait("rate(heapd_requests_total) > 0", allocating_rate)
        self.assertGreater(rate[0], 0)
        # The job's own health series says every scrape was up.
        up = self.query('up{job="heapd"}')
        self.assertEqual([v for _, v in up], [1.0])
        for s in sessions:
            s.call("goodbye")


if __name__ == "__main__":
    h.main()
