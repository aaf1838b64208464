# SPDX-License-Identifier: MIT
"""test_resume.py: a client resumes through restarts and dropped links, and nothing runs twice.

resume_driver (resume_driver.c, over libheapdclient with resume_ms on) pipelines 100,000
mixed mutating requests. The reference run has nothing happen to it. Then the same requests
while the daemon gets SIGTERM twice at random points and is started again (its sessions saved
on the way down and restored on the way up), and again through a proxy that cuts the TCP
link at random points. Each time the driver must finish without an error and print the same
heap as the reference: the same objects, references, slots, payloads, generations, collector
and allocator statistics. A third run goes through a proxy that cuts after random amounts of
the server's responses, so that requests that ran lose their answers and their re-sends are
answered from the replay window. A request run twice (an alloc, a decref) or lost would show.

    test_resume.py RESUME_DRIVER
"""

import random
import socket
import subprocess
import sys
import threading
import unittest

import harness
from harness import Daemon

DRIVER = None
NOPS = 100000
SEED = 20261201


def run_driver(url, on_chunk=None):
    """Runs the driver; on_chunk(n) is called as each pipeline completes. Returns its dump."""
    p = subprocess.Popen([DRIVER, url, str(SEED), str(NOPS)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    lines = []
    for line in p.stdout:
        if line.startswith("chunk "):
            if on_chunk:
                on_chunk(int(line.split()[1]))
        else:
            lines.append(line)
    err = p.stderr.read()
    rc = p.wait(120)
    if rc != 0:
        raise AssertionError("resume_driver exited %d: %s" % (rc, err))
    resumes = int(lines.pop().split()[1])
    return "".join(lines), resumes


class Proxy:
    """A TCP proxy to the daemon that cuts both directions abruptly (RST) after a random
    number of bytes from the client, again and again. With responses, after a random number
    of bytes from the server instead: the requests whose responses are lost then ran, and a
    re-send must be answered from the replay window, not run again."""

    def __init__(self, target, seed, responses=False):
        self.target = target
        self.responses = responses
        self.rnd = random.Random(seed)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self.stop = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.stop:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            b = socket.create_connection(self.target)
            low, high = (2000, 60000) if self.responses else (20000, 600000)
            budget = [self.rnd.randint(low, high) if self.cuts < 6 else 1 << 60]
            pair = (a, b)
            up, down = (None, budget) if self.responses else (budget, None)
            threading.Thread(target=self.pump, args=(a, b, up, pair), daemon=True).start()
            threading.Thread(target=self.pump, args=(b, a, down, pair), daemon=True).start()

    def cut(self, pair):
        # shutdown() first: it wakes the other pump's recv, so close() really closes.
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def pump(self, src, dst, budget, pair):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if budget is not None:
                    budget[0] -= len(data)
                    if budget[0] < 0:
                        self.cuts += 1
                        self.cut(pair)
                        return
                dst.sendall(data)
        except OSError:
            pass
        self.cut(pair)

    def close(self):
        self.stop = True
        self.listener.close()


def cutting_proxy(test, seed, responses=False, daemon=None):
    """A Proxy (see above) to daemon, by default a new one keeping detached sessions for a
    minute; both are cleaned up with the test. Returns (proxy, the URL to connect to)."""
    d = daemon or Daemon({"log_level": "info", "session_linger": "60s"}).start()
    if not daemon:
        test.addCleanup(d.stop)
    proxy = Proxy(d.tcp_addr, seed, responses)
    test.addCleanup(proxy.close)
    return proxy, "tcp://127.0.0.1:%d" % proxy.port


def assert_resumed_through(test, proxy, run, reference):
    """run = (dump, resumes) of a driver that went through proxy: the link was cut at least
    three times, the client resumed each time, and the heap is the reference's."""
    dump, resumes = run
    test.assertGreaterEqual(proxy.cuts, 3)
    test.assertGreaterEqual(resumes, 3)
    test.assertEqual(dump, reference)


class ResumeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        d = Daemon({"workers": 2, "log_level": "info"})
        d.start()
        cls.reference, resumes = run_driver("unix:" + d.sock_path)
        d.stop()
        assert resumes == 0
        assert cls.reference.count("\nobj ") > 1000, cls.reference[:500]

    def test_two_restarts(self):
        d = Daemon({"log_level": "info", "session_linger": "60s", "snapshot_interval": 0,
                    "data_dir": "DATA"}).start()
        self.addCleanup(d.stop)
        rnd = random.Random(SEED)
        at = sorted(rnd.sample(range(5, NOPS // 1000 - 5), 2))
        restarts = []

        def restart(n):
            if at and n == at[0]:
                at.pop(0)
                d.restart()
                restarts.append(n)
        dump, resumes = run_driver("unix:" + d.sock_path, restart)
        self.assertEqual(len(restarts), 2)
        self.assertGreaterEqual(resumes, 2)
        self.assertEqual(dump, self.reference)
        self.assertTrue(any("restored 1 session" in l for l in d.log()))

    def test_cut_links(self):
        proxy, url = cutting_proxy(self, SEED)
        assert_resumed_through(self, proxy, run_driver(url), self.reference)

    def test_lost_responses(self):
        proxy, url = cutting_proxy(self, SEED, responses=True)
        assert_resumed_through(self, proxy, run_driver(url), self.reference)


if __name__ == "__main__":
    DRIVER = sys.argv.pop(1)
    harness.main()
