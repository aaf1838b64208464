#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""TLS listeners (issue 9): tls.listen with tls.cert/tls.key, mutual TLS with tls.client_ca,
tls.min_version, the certificate read again on SIGHUP, the wrong protocol on either kind of
port, what a TLS connection is charged, and each client over it: the protocol client of the
harness, the Python client (blocking and asyncio), heapctl (the C client).

A throw-away CA is made with the `openssl` command for each daemon (tlsca.py).
"""

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import unittest

import harness
from harness import Client, Daemon, status_name, wait_until
from tlsca import TestCA

try:
    import heapd
    import heapd.asyncio
except ImportError:  # run without the package on PYTHONPATH: its tests skip
    heapd = None

HEAPCTL = os.environ.get("HEAPCTL_BIN")


def client_context(ca, cert=None, key=None, **kw):
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


class TLSBase(unittest.TestCase):
    """One CA, a server certificate, and a daemon serving it on tls.listen."""

    client_ca = False  # mutual TLS
    extra = {}  # more tls.* keys
    config = {}  # more top-level keys

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="heapd-tls-")
        cls.ca = TestCA(cls.tmp, "test-ca")
        cls.cert, cls.key = cls.ca.issue("server1")
        tls = {"listen": ["127.0.0.1:0"], "cert": cls.cert, "key": cls.key}
        if cls.client_ca:
            tls["client_ca"] = cls.ca.cert
        tls.update(cls.extra)
        cls.d = Daemon(dict(cls.config, tls=tls)).start()
        assert cls.d.tls_addr, cls.d.ready_status

    @classmethod
    def tearDownClass(cls):
        try:
            status = cls.d.stop()
            assert status == 0, "heapd exited %s" % status
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def tls_client(self, ctx=None, **kw):
        c = Client(self.d.tls_addr, ssl_context=ctx or client_context(self.ca.cert),
                   server_hostname=kw.pop("server_hostname", "127.0.0.1"), **kw)
        self.d.clients.append(c)
        return c


class TLSTest(TLSBase):
    def test_handshake_and_session(self):
        c = self.tls_client()
        self.assertIn(c.sock.version(), ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(c.sock.getpeercert()["subject"], ((("commonName", "server1"),),))
        r = c.hello()
        self.assertEqual(r.status.code, 0, r.status.message)
        h = c.alloc(size=100)
        c.ok("write", handle=h, offset=0, data=b"x" * 100)
        self.assertEqual(c.ok("read", handle=h, offset=0, length=100).data, b"x" * 100)
        # A response larger than a record (16 KiB) and than a flush (64 KiB) arrives whole.
        big = c.alloc(size=300000)
        c.ok("write", handle=big, offset=0, data=bytes(range(256)) * 1171 + b"abcd")
        self.assertEqual(len(c.ok("read", handle=big, offset=0, length=300000).data), 300000)
        c.ok("goodbye")
        self.assertEqual(c.expect_closed(), [])
        self.d.wait_log(r"TLS handshake done \(TLSv1\.[23] ")

    def test_pipelined_requests(self):
        c = self.tls_client()
        c.hello()
        ids = [c.send("alloc", size=8) for _ in range(200)]
        got = [c.recv_response() for _ in ids]
        self.assertEqual([r.id for r in got], ids)
        self.assertTrue(all(r.status.code == 0 for r in got))

    def test_wrong_ca_is_refused_by_the_client(self):
        other = TestCA(self.tmp, "other-ca")
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.tls_client(client_context(other.cert))
        # The server logs the handshake the client gave up on, and goes on serving.
        self.d.wait_log(r"TLS handshake failed: .*; closing")
        self.assertEqual(self.tls_client().hello().status.code, 0)

    def test_plaintext_client_on_the_tls_port(self):
        start = len(self.d.log())
        c = Client(self.d.tls_addr)
        self.d.clients.append(c)
        r = c.hello()
        self.assertEqual(status_name(r), "EPROTO")
        self.assertIn("tls://", r.status.message)
        self.assertEqual(c.expect_closed(), [])
        self.d.wait_log(r"not TLS on a TLS listener", start=start)
        self.assertEqual(self.tls_client().hello().status.code, 0)

    def test_tls_client_on_the_plaintext_port(self):
        start = len(self.d.log())
        raw = socket.create_connection(self.d.tcp_addr, timeout=10)
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            client_context(self.ca.cert).wrap_socket(raw, server_hostname="127.0.0.1")
        raw.close()
        self.d.wait_log(r"a TLS ClientHello on a plaintext listener", start=start)
        # What the TLS client was sent is one heapd error frame, readable as such.
        s = socket.create_connection(self.d.tcp_addr, timeout=10)
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 32)
        c = Client.__new__(Client)
        c.sock, c.buf, c.events = s, b"", []
        r = c.recv_response()
        self.assertEqual((r.id, status_name(r)), (0, "EPROTO"))
        self.assertIn("TLS", r.status.message)
        s.close()
        with self.d.connect(unix=False) as p:
            self.assertEqual(p.hello().status.code, 0)

    def test_tls_1_0_and_1_1_refused(self):
        ctx = client_context(self.ca.cert)
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        try:
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        except ssl.SSLError:
            pass
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            self.tls_client(ctx)

    def test_buffers_charged(self):
        # What OpenSSL holds for the connection is charged with its buffers.
        plain = self.d.session(unix=False)
        tls = self.tls_client()
        tls.hello()
        for c in (plain, tls):
            c.alloc(size=10)
        p = plain.ok("heap_charges").buffers
        t = tls.ok("heap_charges").buffers
        # The SSL, its BIOs and its sealed output: several KiB more than the same
        # connection in plaintext.
        self.assertGreater(t, p + 4096, (p, t))

    def test_hello_deadline_covers_the_handshake(self):
        # A client that opens the TLS port and never finishes the handshake is closed at the
        # hello deadline (hello_timeout, 2 s for this class), without a word it could not
        # decrypt.
        s = socket.create_connection(self.d.tls_addr, timeout=10)
        s.sendall(b"\x16\x03\x01")  # a record header, no more
        s.settimeout(10)
        self.assertEqual(s.recv(100), b"")
        s.close()


TLSTest.config = {"hello_timeout": "2s"}


@unittest.skipIf(heapd is None, "the heapd package is not on PYTHONPATH")
class PythonClientTest(TLSBase):
    client_ca = True

    def setUp(self):
        self.url = "tls://127.0.0.1:%d" % self.d.tls_addr[1]
        self.ccert, self.ckey = self.ca.issue("pyclient", server=False)

    def test_blocking(self):
        with heapd.connect(self.url, ssl_ca_certs=self.ca.cert, ssl_certfile=self.ccert,
                           ssl_keyfile=self.ckey) as s:
            a = s.alloc(size=16, slots=1)
            a.write(0, b"over tls")
            self.assertEqual(a.read(0, 8), b"over tls")
            with s.pipeline() as p:
                for _ in range(100):
                    p.alloc(size=8)
                self.assertEqual(len(p.execute()), 100)
            self.assertEqual(s.gc.collect(), 0)

    def test_ssl_context(self):
        ctx = client_context(self.ca.cert, self.ccert, self.ckey)
        with heapd.connect(self.url, ssl_context=ctx) as s:
            self.assertTrue(s.alloc(size=1))
        # $HEAPD_CACERT and friends, as heapctl's.
        env = {"HEAPD_CACERT": self.ca.cert, "HEAPD_CERT": self.ccert, "HEAPD_KEY": self.ckey}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with heapd.connect(self.url) as s:
                self.assertTrue(s.alloc(size=1))
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def test_resume_over_tls(self):
        s = heapd.connect(self.url, ssl_ca_certs=self.ca.cert, ssl_certfile=self.ccert,
                          ssl_keyfile=self.ckey)
        a = s.alloc(size=4)
        a.write(0, b"kept")
        start = len(self.d.log())
        # Each reconnect is a new TLS connection, handed to the worker with the fewest
        # connections; one that lands on another worker than the session's moves there with
        # its TLS state (hello comes after the handshake). Until that has happened once:
        for _ in range(40):
            s.detach()
            s.reconnect()
            self.assertEqual(a.read(0, 4), b"kept")
            if any("moving to worker" in l for l in self.d.log()[start:]):
                break
        else:
            self.fail("no reconnect moved to the session's worker")
        s.close()

    def test_refusals(self):
        with self.assertRaises(heapd.ConnectionClosed) as cm:
            heapd.connect(self.url, ssl_ca_certs=TestCA(self.tmp, "py-other-ca").cert,
                          ssl_certfile=self.ccert, ssl_keyfile=self.ckey)
        self.assertIsInstance(cm.exception.__cause__, ssl.SSLCertVerificationError)
        with self.assertRaises(heapd.ConnectionClosed):  # no client certificate
            heapd.connect(self.url, ssl_ca_certs=self.ca.cert)
        with self.assertRaises(ValueError):
            heapd.connect("tcp://127.0.0.1:%d" % self.d.tcp_addr[1], ssl_ca_certs=self.ca.cert)

    def test_asyncio(self):
        async def main():
            async with heapd.asyncio.connect(self.url, ssl_ca_certs=self.ca.cert,
                                             ssl_certfile=self.ccert,
                                             ssl_keyfile=self.ckey) as s:
                refs = await asyncio.gather(*(s.alloc(size=64) for _ in range(50)))
                await refs[0].write(0, b"async")
                self.assertEqual(await refs[0].read(0, 5), b"async")
                return len(refs)
        self.assertEqual(asyncio.run(main()), 50)

    def test_asyncio_refused(self):
        async def main():
            await heapd.asyncio.connect(self.url, ssl_ca_certs=TestCA(self.tmp, "aother").cert,
                                        ssl_certfile=self.ccert, ssl_keyfile=self.ckey)
        with self.assertRaises(heapd.ConnectionClosed):
            asyncio.run(main())


@unittest.skipIf(not HEAPCTL, "HEAPCTL_BIN not set")
class HeapctlTest(TLSBase):
    """heapctl, and under it the C client (clients/c/client.c), over TLS."""

    client_ca = True

    def heapctl(self, *args, env=None, check=None):
        r = subprocess.run([HEAPCTL, "--connect", "tls://127.0.0.1:%d" % self.d.tls_addr[1],
                            "--json", *args], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, **(env or {})))
        if check is not None:
            self.assertEqual(r.returncode, check, r.stdout + r.stderr)
        return r

    def test_session(self):
        cert, key = self.ca.issue("ctl", server=False)
        r = self.heapctl("--cacert", self.ca.cert, "--cert", cert, "--key", key, "stats",
                         check=0)
        self.assertIn('"objects"', r.stdout)
        # The shell: several requests on one TLS connection, answers bigger than a record.
        r = subprocess.run([HEAPCTL, "--connect", "tls://127.0.0.1:%d" % self.d.tls_addr[1],
                            "--cacert", self.ca.cert, "--cert", cert, "--key", key, "shell"],
                           input="ping\nstats\ncensus\nping\n", capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_environment(self):
        cert, key = self.ca.issue("ctlenv", server=False)
        self.heapctl("ping", env={"HEAPD_CACERT": self.ca.cert, "HEAPD_CERT": cert,
                                  "HEAPD_KEY": key}, check=0)

    def test_refusals(self):
        cert, key = self.ca.issue("ctl2", server=False)
        other = TestCA(self.tmp, "ctl-other-ca")
        r = self.heapctl("--cacert", other.cert, "--cert", cert, "--key", key, "ping", check=3)
        self.assertIn("certificate verify failed", r.stdout + r.stderr)
        r = self.heapctl("--cacert", self.ca.cert, "ping")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("certificate", r.stdout + r.stderr)
        r = self.heapctl("--cacert", os.path.join(self.tmp, "missing.pem"), "ping")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("missing.pem", r.stdout + r.stderr)
        r = self.heapctl("--key", key, "ping", check=2)
        self.assertIn("--key needs --cert", r.stdout + r.stderr)
        r = subprocess.run([HEAPCTL, "--connect", "tls://127.0.0.1", "ping"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)


class MinVersionTest(TLSBase):
    extra = {"min_version": "1.3"}

    def test_tls_1_2_refused(self):
        ctx = client_context(self.ca.cert)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            self.tls_client(ctx)
        self.assertEqual(self.tls_client().sock.version(), "TLSv1.3")


class MutualTLSTest(TLSBase):
    client_ca = True

    def test_client_with_a_trusted_certificate(self):
        cert, key = self.ca.issue("client1", server=False)
        c = self.tls_client(client_context(self.ca.cert, cert, key))
        self.assertEqual(c.hello().status.code, 0)
        c.alloc(size=1)

    def test_client_without_a_certificate_is_refused(self):
        start = len(self.d.log())
        with self.assertRaises((ssl.SSLError, ConnectionError, harness.Closed)):
            # TLS 1.3 ends the client's side of the handshake before the server has
            # checked: the refusal then comes on the first read.
            c = self.tls_client()
            c.hello()
        self.d.wait_log(r"TLS handshake failed: .*certificate.*; closing", start=start)

    def test_client_of_another_ca_is_refused(self):
        other = TestCA(self.tmp, "rogue-ca")
        cert, key = other.issue("intruder", server=False)
        start = len(self.d.log())
        with self.assertRaises((ssl.SSLError, ConnectionError, harness.Closed)):
            c = self.tls_client(client_context(self.ca.cert, cert, key))
            c.hello()
        self.d.wait_log(r"TLS handshake failed: .*certificate verify failed", start=start)
        # And nothing was lost: a trusted client is served.
        cert, key = self.ca.issue("client2", server=False)
        self.assertEqual(self.tls_client(client_context(self.ca.cert, cert, key))
                         .hello().status.code, 0)


class ReloadTest(TLSBase):
    def test_sighup_serves_a_new_certificate(self):
        old = self.tls_client()
        self.assertEqual(old.hello().status.code, 0)
        h = old.alloc(size=4)
        # A renewed certificate written over the old files, then SIGHUP.
        self.ca.issue("server2", cert=self.cert, key=self.key)
        start = len(self.d.log())
        self.d.signal(signal.SIGHUP)
        self.d.wait_log(r"tls: serving certificate /CN=server2", start=start)
        new = self.tls_client()
        self.assertEqual(new.sock.getpeercert()["subject"], ((("commonName", "server2"),),))
        self.assertEqual(new.hello().status.code, 0)
        # The connection opened before goes on, with the certificate it started with.
        self.assertEqual(old.sock.getpeercert()["subject"], ((("commonName", "server1"),),))
        old.ok("write", handle=h, offset=0, data=b"abcd")
        self.assertEqual(old.ok("read", handle=h, offset=0, length=4).data, b"abcd")

    def test_sighup_with_a_bad_key_keeps_the_running_certificate(self):
        # tls.key names a key that is not the certificate's: the reload is refused, with a
        # log line, and the server goes on serving what it served.
        good = dict(self.d.config)
        self.d.write_config(dict(good, tls=dict(good["tls"], key=self.ca.key)))
        try:
            start = len(self.d.log())
            self.d.signal(signal.SIGHUP)
            self.d.wait_log(r"config reload: tls: tls\.key: .*mismatch; keeping the running "
                            r"certificate", start=start)
            self.assertEqual(self.tls_client().hello().status.code, 0)
        finally:
            self.d.write_config(good)


class ConfigTest(unittest.TestCase):
    def check(self, text):
        d = tempfile.mkdtemp(prefix="heapd-tlscfg-")
        try:
            path = os.path.join(d, "heapd.yaml")
            with open(path, "w") as f:
                f.write(text)
            return subprocess.run([harness.HEAPD_BIN, "--check-config", path],
                                  capture_output=True, text=True)
        finally:
            shutil.rmtree(d)

    def test_section_errors(self):
        r = self.check("tls:\n  listen: [\"127.0.0.1:0\"]\n")
        self.assertEqual(r.returncode, 78)
        self.assertIn("tls.listen needs tls.cert and tls.key", r.stderr)
        r = self.check("tls:\n  certificate: x\n")
        self.assertEqual(r.returncode, 78)
        self.assertIn('unknown key "tls.certificate"', r.stderr)
        self.assertIn(":2:3:", r.stderr)
        r = self.check("tls: 5\n")
        self.assertEqual(r.returncode, 78)
        self.assertIn("tls: expected a mapping", r.stderr)
        r = self.check("tls.cert: x\n")
        self.assertEqual(r.returncode, 78)
        r = self.check("tls:\n  min_version: \"1.1\"\n")
        self.assertEqual(r.returncode, 78)
        r = self.check("tls:\n  cert: a\n  cert: b\n")
        self.assertEqual(r.returncode, 78)
        self.assertIn("tls.cert: given twice", r.stderr)

    def test_section_printed_back(self):
        r = self.check("tls:\n  listen: [\":7430\"]\n  cert: /c.pem\n  key: /k.pem\n"
                       "  min_version: \"1.3\"\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('tls:\n  listen: [":7430"]\n  cert: "/c.pem"\n  key: "/k.pem"\n'
                      '  client_ca: ""\n  min_version: 1.3\n', r.stdout)
        r2 = self.check(r.stdout)
        self.assertEqual(r2.returncode, 0, r2.stderr)
        self.assertEqual(r2.stdout, r.stdout)

    def test_unloadable_certificate_stops_the_start(self):
        tmp = tempfile.mkdtemp(prefix="heapd-tls-")
        try:
            d = Daemon({"tls": {"listen": ["127.0.0.1:0"], "cert": os.path.join(tmp, "none"),
                                "key": os.path.join(tmp, "none")}})
            d.start(wait_ready=False)
            self.assertNotEqual(d.wait_exit(), 0)
            d.wait_log(r"tls: tls\.cert: cannot load .*none")
        finally:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    harness.main()
