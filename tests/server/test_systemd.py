# SPDX-License-Identifier: MIT
"""test_systemd.py: heapd under systemd's protocols, without systemd.

The notify protocol: a fake $NOTIFY_SOCKET (a Python Unix datagram socket, by path and in
the abstract namespace) receives READY=1 once heapd listens, RELOADING=1 then READY=1 around
SIGHUP, STOPPING=1 at shutdown, each with a STATUS=. Socket activation: sockets passed as
$LISTEN_FDS from descriptor 3 with $LISTEN_PID are used instead of binding. And
`systemd-analyze verify` accepts the units, where systemd-analyze exists.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import harness as h

SOURCE_DIR = os.environ.get("HEAPD_SOURCE_DIR",
                            os.path.join(os.path.dirname(__file__), "..", ".."))


class FakeNotify:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "heapd-test-notify-%d" % os.getpid()
            self.sock.bind("\0" + name)
            self.address = "@" + name
            self.dir = None
        else:
            self.dir = tempfile.mkdtemp(prefix="heapd-notify-")
            self.address = os.path.join(self.dir, "notify")
            self.sock.bind(self.address)
        self.sock.settimeout(10)

    def recv(self):
        msg = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in msg.split("\n") if line)

    def expect(self, key):
        """The next message, which must set key=1 (e.g. READY)."""
        m = self.recv()
        assert m.get(key) == "1", "expected %s=1, got %r" % (key, m)
        return m

    def close(self):
        self.sock.close()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class NotifyTest(h.unittest.TestCase):
    def run_cycle(self, abstract):
        n = FakeNotify(abstract)
        self.addCleanup(n.close)
        d = h.Daemon(env={"NOTIFY_SOCKET": n.address}).start()
        try:
            ready = n.expect("READY")
            self.assertIn("Serving", ready["STATUS"])
            self.assertEqual(int(ready["MAINPID"]), d.proc.pid)
            d.session().ok("ping")
            d.signal(signal.SIGHUP)
            reloading = n.expect("RELOADING")
            self.assertGreater(int(reloading["MONOTONIC_USEC"]), 0)
            self.assertIn("STATUS", reloading)
            self.assertIn("reloaded", n.expect("READY")["STATUS"])
            d.signal(signal.SIGTERM)
            self.assertIn("STATUS", n.expect("STOPPING"))
            self.assertEqual(d.wait_exit(10), 0)
        finally:
            d.stop()

    def test_notify_path(self):
        self.run_cycle(abstract=False)

    def test_notify_abstract(self):
        self.run_cycle(abstract=True)

    def test_failed_reload_still_reports_ready(self):
        n = FakeNotify()
        self.addCleanup(n.close)
        with h.Daemon(env={"NOTIFY_SOCKET": n.address}) as d:
            n.expect("READY")
            with open(d.config_path, "a") as f:
                f.write("bogus_key: 1\n")
            d.signal(signal.SIGHUP)
            n.expect("RELOADING")
            self.assertIn("reload failed", n.expect("READY")["STATUS"])

    def test_saving_and_restoring_extend_the_timeouts(self):
        # With data_dir, a stop saves every session (EXTEND_TIMEOUT_USEC after each) and a
        # start reads them back (STATUS=Restoring ..., EXTEND_TIMEOUT_USEC) before READY=1.
        n = FakeNotify()
        self.addCleanup(n.close)
        d = h.Daemon({"session_linger": "60s", "snapshot_interval": 0},
                     env={"NOTIFY_SOCKET": n.address})
        d.config["data_dir"] = os.path.join(d.dir, "data")
        d.write_config(d.config)
        d.start()
        self.addCleanup(d.stop)
        self.assertIn("Restoring sessions", n.recv()["STATUS"])  # an empty data_dir
        n.expect("READY")
        a, b = d.session(), d.session()
        a.alloc(size=8)
        b.alloc(size=8)
        d.signal(signal.SIGTERM)
        self.assertIn("saving sessions", n.expect("STOPPING")["STATUS"])
        extends = [n.recv() for _ in range(2)]
        self.assertEqual([m.get("EXTEND_TIMEOUT_USEC") for m in extends], ["30000000"] * 2)
        self.assertEqual(d.wait_exit(10), 0)
        d.tcp_addr = d.unix_addr = None
        d.start()
        m = n.recv()
        self.assertEqual(m.get("STATUS"), "Restoring sessions from " + d.config["data_dir"])
        self.assertEqual([n.recv().get("EXTEND_TIMEOUT_USEC") for _ in range(2)],
                         ["30000000"] * 2)
        self.assertIn("Serving", n.expect("READY")["STATUS"])

    def test_no_notify_socket_is_fine(self):
        with h.Daemon(env={"NOTIFY_SOCKET": ""}) as d:
            d.session().ok("ping")


# Runs heapd with the listed descriptors moved to 3, 4, ... and LISTEN_PID set to its own
# pid, as systemd does (execv keeps the pid).
LAUNCHER = r"""
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of the way of 3, 4, ...
for i, fd in enumerate(moved):
    os.dup2(fd, 3 + i)  # inheritable
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


class SocketActivationTest(h.unittest.TestCase):
    def test_passed_sockets_are_used(self):
        tmp = tempfile.mkdtemp(prefix="heapd-act-")
        self.addCleanup(shutil.rmtree, tmp, True)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(16)
        path = os.path.join(tmp, "activated.sock")
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(path)
        unix.listen(16)
        fds = "%d,%d" % (tcp.fileno(), unix.fileno())
        d = h.Daemon()
        d.args = [sys.executable, "-c", LAUNCHER, fds, h.HEAPD_BIN, "--config", d.config_path]
        d.pass_fds = (tcp.fileno(), unix.fileno())
        with d:
            tcp.close()
            unix.close()
            self.assertEqual(d.tcp_addr, tcp_addr := ("127.0.0.1", d.tcp_addr[1]))
            self.assertEqual(d.unix_addr, path)
            d.wait_log("listening on tcp 127.0.0.1:%d \\(socket activation\\)" % tcp_addr[1])
            d.wait_log("listening on unix %s \\(socket activation\\)" % path)
            # The config's own addresses were not bound.
            self.assertFalse(os.path.exists(d.sock_path))
            self.assertEqual(len([l for l in d.log() if "listening on" in l]), 2)
            with h.Client(path) as c:
                self.assertEqual(c.hello().status.code, 0)
            with h.Client(d.tcp_addr) as c:
                self.assertEqual(c.hello().status.code, 0)
                c.ok("ping")

    def test_listen_pid_of_another_process_is_ignored(self):
        d = h.Daemon(env={"LISTEN_FDS": "1", "LISTEN_PID": "1"})
        with d:
            self.assertTrue(os.path.exists(d.sock_path))
            d.session().ok("ping")


class UnitFilesTest(h.unittest.TestCase):
    def test_systemd_analyze_verify(self):
        tool = shutil.which("systemd-analyze")
        if not tool:
            self.skipTest("systemd-analyze is not installed")
        tmp = tempfile.mkdtemp(prefix="heapd-units-")
        self.addCleanup(shutil.rmtree, tmp, True)
        units = []
        for name in ("heapd.service", "heapd.socket"):
            text = h.read_file(os.path.join(SOURCE_DIR, "systemd", name))
            # verify checks that ExecStart's binary exists: point it at the one just built
            # (the units name the package's path).
            if name == "heapd.service":
                self.assertIn("ExecStart=/usr/bin/heapd ", text)
            text = text.replace("/usr/bin/heapd", os.path.abspath(h.HEAPD_BIN))
            dst = os.path.join(tmp, name)
            with open(dst, "w") as f:
                f.write(text)
            units.append(dst)
        # --man=no: the Documentation= pages are not installed from a checkout (the package
        # test verifies the installed units with them).
        r = subprocess.run([tool, "verify", "--man=no", *units], capture_output=True, text=True,
                           timeout=60, cwd=tmp)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        noise = [l for l in (r.stdout + r.stderr).splitlines() if "heapd" in l]
        self.assertEqual(noise, [])

    def test_unit_contents(self):
        service = h.read_file(os.path.join(SOURCE_DIR, "systemd", "heapd.service"))
        for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "DynamicUser=yes",
                     "NoNewPrivileges=yes", "ProtectSystem=strict", "Requires=heapd.socket",
                     "SupplementaryGroups=heapd-config", "LimitNOFILE=65536"):
            self.assertIn(line + "\n", service)
        # systemd refuses a dynamic user named like a static group (heapd is one).
        self.assertRegex(service, r"\nUser=(?!heapd\n)\S+\n")
        # The service writes nothing: /run/heapd is the socket unit's, and a RuntimeDirectory
        # would take it over and delete it (and the socket) when the service stops.
        self.assertNotIn("RuntimeDirectory=", service)
        socket_unit = h.read_file(os.path.join(SOURCE_DIR, "systemd", "heapd.socket"))
        for line in ("ListenStream=127.0.0.1:7420", "ListenStream=/run/heapd/heapd.sock",
                     "SocketGroup=heapd", "SocketMode=0660"):
            self.assertIn(line + "\n", socket_unit)
        sysusers = h.read_file(os.path.join(SOURCE_DIR, "systemd", "heapd.sysusers"))
        self.assertRegex(sysusers, r"\ng heapd +-\n")
        self.assertRegex(sysusers, r"\ng heapd-config +-\n")


if __name__ == "__main__":
    h.main()
