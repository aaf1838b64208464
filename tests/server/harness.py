# SPDX-License-Identifier: MIT
"""harness.py: the one fixture for tests that start the real heapd, and a protocol client.

Every Python test that runs a daemon uses Daemon from here: the server tests (tests/server),
heapctl's (tests/clients/test_heapctl.py) and the Python client's. The environment tells it
where things are (ctest's registration, heapd_daemon_test in tests/CMakeLists.txt, sets them):
  HEAPD_BIN         the heapd binary (build/bin/heapd)
  HEAPD_PB2_DIR     the directory holding heapd_pb2.py, generated at build time by protoc
                    (needed only by Client, the protocol client)
  HEAPD_SOURCE_DIR  the source tree

Daemon(config) writes a temporary YAML config (a Unix socket in a temporary directory, TCP
on 127.0.0.1 port 0 unless told otherwise, admin by peer credentials off), starts heapd and waits until it is ready: it
gives heapd a notify socket of its own, as systemd does, and waits for READY=1, whose STATUS
names the addresses heapd listens on. Nothing here sleeps for a fixed time: a test that
brings its own NOTIFY_SOCKET gets the "ready" log line waited for instead. On stop() it
checks that heapd exited 0 and that no sanitizer reported anything. Client speaks the framing
(4-byte big-endian length + one protobuf message) and collects events that arrive between
responses.
"""

import atexit
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.environ.get("HEAPD_PB2_DIR", "."))
try:
    import heapd_pb2 as pb  # noqa: E402  (generated into the build tree)
except ImportError:  # tests that only run heapd (heapctl's) need not have it
    pb = None

HEAPD_BIN = os.environ.get("HEAPD_BIN", "build/bin/heapd")
START_TIMEOUT = 10.0
# What AddressSanitizer, LeakSanitizer and UBSan print (builds with HEAPD_ASAN/HEAPD_UBSAN).
SANITIZER_RX = re.compile(r"ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: \w+Sanitizer")
IO_TIMEOUT = 10.0


RUNNING = []  # every heapd started; any still alive when the tests end is killed


@atexit.register
def _kill_leftovers():
    for proc in RUNNING:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def yaml_value(v):
    """A Python value as YAML flow text: lists, strings, numbers, booleans."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(yaml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # a section such as tls:
        return "{" + ", ".join("%s: %s" % (k, yaml_value(x)) for k, x in v.items()) + "}"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(v)


class Daemon:
    """One heapd process with a temporary config; a context manager that stops it.
    data_dir "DATA" in config means a data directory inside the daemon's temporary one."""

    def __init__(self, config=None, env=None, tcp=True, unix=True, pass_fds=(), args=None):
        self.dir = tempfile.mkdtemp(prefix="heapd-test-")
        self.sock_path = os.path.join(self.dir, "heapd.sock")
        cfg = {
            "listen": ["127.0.0.1:0"] if tcp else [],
            "unix_socket": self.sock_path if unix else "",
            "unix_socket_mode": "0600",
            "workers": 2,
            "log_level": "debug",
            "http": [],  # the HTTP server's default port is fixed: tests ask for port 0
            # The tests run as root, whom a Unix socket's peer credentials make an admin
            # without a token: off, so that tokens decide. The tests of peer credentials
            # (test_peercred.py) turn it on.
            "admin_peer_uids": "off",
        }
        cfg.update(config or {})
        if cfg.get("data_dir") == "DATA":  # persistence, in the daemon's own directory
            cfg["data_dir"] = os.path.join(self.dir, "data")
        self.config = cfg
        self.config_path = os.path.join(self.dir, "heapd.yaml")
        self.write_config(cfg)
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.user_env = env
        self.ready_status = None
        self.pass_fds = pass_fds
        self.args = args
        self.proc = None
        self.log_lines = []
        self.log_lock = threading.Lock()
        self.log_cond = threading.Condition(self.log_lock)
        self.tcp_addr = None
        self.tls_addr = None  # (host, port) of the first tls.listen address
        self.unix_addr = None
        self.http_addr = None  # (host, port) of the HTTP server's first address
        self.clients = []  # closed by stop()

    def write_config(self, cfg):
        with open(self.config_path, "w") as f:
            for k, v in cfg.items():
                f.write("%s: %s\n" % (k, yaml_value(v)))

    def start(self, wait_ready=True):
        """Starts heapd; with wait_ready, returns once it is serving (fails the test if it
        exits or is not ready within START_TIMEOUT)."""
        args = self.args or [HEAPD_BIN, "--config", self.config_path]
        env = dict(self.env)
        notify = None
        if "NOTIFY_SOCKET" not in (self.user_env or {}):
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            path = os.path.join(self.dir, "notify.sock")
            if os.path.exists(path):  # the last start's (a restart)
                os.unlink(path)
            notify.bind(path)
            env["NOTIFY_SOCKET"] = path
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=env, pass_fds=self.pass_fds)
        RUNNING.append(self.proc)
        self.reader = threading.Thread(target=self._read_log, daemon=True)
        self.reader.start()
        try:
            if wait_ready and notify:
                self._wait_notify_ready(notify)
            elif wait_ready:
                self.wait_log(r'\bready("\})?$', START_TIMEOUT)  # text or json
                self._addresses_from_log()
        except BaseException:
            self.proc.kill()  # never leave a half-started daemon behind
            self.proc.wait()
            raise
        finally:
            if notify:
                notify.close()
        return self

    def _wait_notify_ready(self, notify):
        """Reads heapd's notify messages until READY=1; takes the addresses from its STATUS
        ("Serving on tcp 127.0.0.1:4242, unix /tmp/x/heapd.sock with 2 workers")."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            # Wakes on a message, or every 0.1 s to see whether heapd died before it was ready.
            readable, _, _ = select.select([notify], [], [], max(0.0, min(left, 0.1)))
            if readable:
                msg = dict(l.split("=", 1) for l in notify.recv(4096).decode().split("\n")
                           if "=" in l)
                if msg.get("READY") == "1":
                    self.ready_status = msg.get("STATUS", "")
                    m = re.match(r"Serving on (.*) with \d+ workers?$", self.ready_status)
                    for name in (m.group(1).split(", ") if m else []):
                        kind, _, where = name.partition(" ")
                        if kind == "tcp" and not self.tcp_addr:
                            host, _, port = where.rpartition(":")
                            self.tcp_addr = (host.strip("[]"), int(port))
                        elif kind == "tls" and not self.tls_addr:
                            host, _, port = where.rpartition(":")
                            self.tls_addr = (host.strip("[]"), int(port))
                        elif kind == "unix" and not self.unix_addr:
                            self.unix_addr = where
                        elif kind == "http" and not self.http_addr:
                            host, _, port = where.rpartition(":")
                            self.http_addr = (host.strip("[]"), int(port))
                    return
            elif self.proc.poll() is not None:
                raise AssertionError("heapd exited %d before it was ready; log:\n%s"
                                     % (self.proc.returncode, self._log_tail()))
            elif left <= 0:
                raise AssertionError("heapd not ready in %s s; log:\n%s"
                                     % (START_TIMEOUT, self._log_tail()))

    def _addresses_from_log(self):
        for line in self.log():
            m = re.search(r"listening on tcp (\S+):(\d+)", line)
            if m and not self.tcp_addr:
                self.tcp_addr = (m.group(1).strip("[]"), int(m.group(2)))
            m = re.search(r'listening on unix ([^\s"]+)', line)
            if m and not self.unix_addr:
                self.unix_addr = m.group(1)
            m = re.search(r"listening on http (\S+):(\d+)", line)
            if m and not self.http_addr:
                self.http_addr = (m.group(1).strip("[]"), int(m.group(2)))

    def _log_tail(self, n=40):
        self.reader.join(1)
        return "\n".join(self.log()[-n:])

    def _read_log(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if os.environ.get("HEAPD_TEST_ECHO"):
                sys.stderr.write("heapd: " + line + "\n")
            with self.log_cond:
                self.log_lines.append(line)
                self.log_cond.notify_all()

    def log(self):
        with self.log_lock:
            return list(self.log_lines)

    def wait_log(self, pattern, timeout=IO_TIMEOUT, start=0):
        """Waits for a log line (from index start on) matching pattern; returns it."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.log_cond:
            while True:
                for line in self.log_lines[start:]:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError("no log line matching %r; log:\n%s"
                                         % (pattern, "\n".join(self.log_lines[-40:])))
                self.log_cond.wait(min(left, 0.1))

    def connect(self, unix=True, **kw):
        addr = self.unix_addr if unix and self.unix_addr else None
        c = Client(addr or self.tcp_addr, **kw)
        self.clients.append(c)
        return c

    def session(self, unix=True, **hello):
        """A connected client that has said hello; fails the test if hello fails."""
        c = self.connect(unix)
        r = c.hello(**hello)
        if r.status.code != 0:
            raise AssertionError("hello failed: %s %s" % (r.status.name, r.status.message))
        return c

    def http_get(self, path, headers=None, method="GET", timeout=IO_TIMEOUT):
        """One request to the HTTP server on a new connection: (status, headers, body)."""
        import http.client
        conn = http.client.HTTPConnection(*self.http_addr, timeout=timeout)
        try:
            conn.request(method, path, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=10.0):
        return self.proc.wait(timeout)

    def restart(self, sig=None):
        """Stops heapd with sig (SIGTERM by default, which must exit 0) and starts it again
        on the same config and data; its clients are closed and its addresses read afresh."""
        sig = sig or signal.SIGTERM
        for c in self.clients:
            c.close()
        self.clients = []
        self.signal(sig)
        rc = self.wait_exit()
        if sig == signal.SIGTERM and rc != 0:
            raise AssertionError("heapd exited %d after SIGTERM; log:\n%s"
                                 % (rc, self._log_tail()))
        self.tcp_addr = self.unix_addr = self.http_addr = None
        return self.start()

    def stop(self):
        """Stops heapd with SIGTERM if it still runs and returns its exit status. Fails when
        it does not exit 0 after that SIGTERM, or when a sanitizer reported anything."""
        for c in self.clients:
            c.close()
        stopped_here = self.proc and self.proc.poll() is None
        if stopped_here:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.reader.join(5)
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if not self.proc:
            return None
        bad = [l for l in self.log() if SANITIZER_RX.search(l)]
        if bad:
            raise AssertionError("sanitizer report from heapd:\n" + "\n".join(self.log()[-60:]))
        if stopped_here and self.proc.returncode != 0:
            raise AssertionError("heapd exited %d after SIGTERM; log:\n%s"
                                 % (self.proc.returncode, "\n".join(self.log()[-30:])))
        return self.proc.returncode

    def __enter__(self):
        return self if self.proc else self.start()

    def __exit__(self, *exc):
        self.stop()


def parse_metrics(text):
    """{(name, frozenset(labels)): value} from the Prometheus exposition text; fails on a
    sample line that does not parse."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$', line)
        assert m, "bad sample line %r" % line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def read_file(path):
    with open(path) as f:
        return f.read()


def frame(msg_bytes):
    return struct.pack(">I", len(msg_bytes)) + msg_bytes


def make_request(rid, op, **fields):
    """Request(id=rid) with its `op` oneof set to that op's message built from fields."""
    mt = pb.Request.DESCRIPTOR.fields_by_name[op].message_type
    cls = getattr(pb, mt.name)
    return pb.Request(id=rid, **{op: cls(**fields)})


class Closed(Exception):
    """The server closed the connection."""


class Client:
    """A blocking protocol client. Events received while waiting are kept in .events."""

    def __init__(self, addr, timeout=IO_TIMEOUT, ssl_context=None, server_hostname=None):
        """ssl_context: speak TLS (an ssl.SSLContext) over the TCP connection to addr."""
        if pb is None:
            raise RuntimeError("heapd_pb2 not found: set HEAPD_PB2_DIR (ctest does)")
        if isinstance(addr, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(addr)
            if ssl_context is not None:
                self.sock = ssl_context.wrap_socket(self.sock, server_hostname=server_hostname)
        except OSError:
            self.sock.close()
            raise
        self.buf = b""
        self.next_id = 1
        self.events = []
        self.hello_result = None

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- bytes and frames ------------------------------------------------------------------

    def send_raw(self, data):
        # A server that refused the connection (ETOOMANY at accept) may have closed it before
        # these bytes went out: its answer is still there to read, so the send's failure is
        # not the story. The next read says what happened.
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.send_failed = True

    def send_request(self, req):
        self.send_raw(frame(pb.ClientFrame(request=req).SerializeToString()))

    def _fill(self, n):
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed("connection closed by the server")
            self.buf += chunk

    def recv_frame(self):
        self._fill(4)
        (n,) = struct.unpack(">I", self.buf[:4])
        self._fill(4 + n)
        data, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        f = pb.ServerFrame()
        f.ParseFromString(data)
        return f

    def recv_response(self):
        """The next response; events before it go to self.events."""
        while True:
            f = self.recv_frame()
            if f.WhichOneof("kind") == "response":
                return f.response
            self.events.append(f.event)

    def expect_closed(self, timeout=IO_TIMEOUT):
        """Reads until EOF; returns the responses received before it."""
        self.sock.settimeout(timeout)
        got = []
        try:
            while True:
                got.append(self.recv_response())
        except (Closed, ConnectionResetError, BrokenPipeError):
            return got

    # -- requests ----------------------------------------------------------------------------

    def req(self, op, **fields):
        rid = self.next_id
        self.next_id += 1
        return make_request(rid, op, **fields)

    def send(self, op, **fields):
        r = self.req(op, **fields)
        self.send_request(r)
        return r.id

    def call(self, op, **fields):
        rid = self.send(op, **fields)
        resp = self.recv_response()
        # id 0 with an error is the server's last word on the connection (ETOOMANY at
        # accept, ETIMEDOUT, ESHUTDOWN), which may come in place of any answer.
        assert resp.id == rid or (resp.id == 0 and resp.status.code), \
            "response id %d for request %d" % (resp.id, rid)
        return resp

    def ok(self, op, **fields):
        """call() that fails unless the status is OK; returns the result (or the response)."""
        resp = self.call(op, **fields)
        if resp.status.code != 0:
            raise AssertionError("%s failed: %s %s" % (op, resp.status.name, resp.status.message))
        which = resp.WhichOneof("result")
        return getattr(resp, which) if which else resp

    def hello(self, **fields):
        fields.setdefault("protocol_version", 1)
        fields.setdefault("client_name", "harness")
        resp = self.call("hello", **fields)
        if resp.status.code == 0:
            self.hello_result = resp.hello
        return resp

    def alloc(self, size=0, slots=0, **kw):
        return self.ok("alloc", size=size, slots=slots, **kw).handle


def status_name(resp):
    return resp.status.name


def wait_until(pred, timeout=5.0):
    """pred's first true value, asked again until timeout. pred asks heapd something (a
    request, a connection): that round trip paces the retries, so nothing sleeps. For what
    the server changes on its own time (counters it publishes, a slot it gives back after a
    close) and says nowhere else."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
    return pred()


def main():
    unittest.main(verbosity=2)
