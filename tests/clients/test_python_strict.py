#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The Python client trusts no server: scripted fake servers that break the protocol.

Each test starts a small server on a temporary Unix socket (and one on a free loopback TCP
port), whose script answers the client's frames as a broken or hostile server would: an
echo server, a hello that is not heapd's, responses with the wrong id or the wrong result,
frames cut off by a close, frames over the limit.  The client must raise
``heapd.ProtocolError`` (its subclass ``heapd.BadReply``) or ``ConnectionError``, never
return None or a made-up value, and drop a connection it can no longer trust.  No heapd is
needed; the suite runs once per codec (HEAPD_PYTHON_IMPLEMENTATION).

Run: PYTHONPATH=<build>/clients/python /usr/bin/python3 test_python_strict.py
"""

import os
import socket
import sys
import tempfile
import threading
import unittest

import heapd
from heapd._ops import pb

GOOD_LIMITS = pb.Limits(max_bytes=0, max_objects=0, max_frame_bytes=65536,
                        max_read_bytes=61440)


def frame(msg):
    raw = msg.SerializeToString()
    return len(raw).to_bytes(4, "big") + raw


def ok():
    return pb.Status(code=0, name="OK")


def hello_result(**kw):
    fields = dict(session_id="0123456789abcdef", resume_token="f" * 32,
                  server_version="9.8.7", protocol_version=1, limits=GOOD_LIMITS)
    fields.update(kw)
    return pb.HelloResult(**fields)


def response(rid, status=None, **result):
    return frame(pb.ServerFrame(response=pb.Response(id=rid, status=status or ok(), **result)))


class Conn:
    """The server's side of one connection: reads the client's frames."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def read_request(self):
        while len(self.buf) < 4 or len(self.buf) < 4 + int.from_bytes(self.buf[:4], "big"):
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        n = int.from_bytes(self.buf[:4], "big")
        raw, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return pb.ClientFrame.FromString(raw).request

    def send(self, data):
        self.sock.sendall(data)

    def hello(self, **kw):
        req = self.read_request()
        assert req.WhichOneof("op") == "hello", req
        self.send(response(req.id, hello=hello_result(**kw)))
        return req


class FakeServer:
    """Listens on a Unix socket (and TCP); runs ``script(conn)`` for each connection."""

    def __init__(self, script, tcp=False):
        self.dir = tempfile.mkdtemp(prefix="heapd-fake-")
        self.path = os.path.join(self.dir, "fake.sock")
        if tcp:
            self.lsock = socket.socket()
            self.lsock.bind(("127.0.0.1", 0))
            self.url = f"tcp://127.0.0.1:{self.lsock.getsockname()[1]}"
        else:
            self.lsock = socket.socket(socket.AF_UNIX)
            self.lsock.bind(self.path)
            self.url = f"unix:{self.path}"
        self.lsock.listen(8)
        self.script = script
        self.errors = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                sock, _ = self.lsock.accept()
            except OSError:
                return
            try:
                self.script(Conn(sock))
            except Exception as exc:  # noqa: BLE001 - reported by close()
                self.errors.append(exc)
            finally:
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self):
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close() alone does not)
        except OSError:
            pass
        self.lsock.close()
        self.thread.join(5)
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.rmdir(self.dir)


class StrictTest(unittest.TestCase):
    def serve(self, script, tcp=False):
        server = FakeServer(script, tcp)
        self.addCleanup(server.close)
        return server

    # -- the hello --------------------------------------------------------------------------

    def test_echo_server_is_refused(self):
        def echo(conn):
            while True:
                data = conn.sock.recv(65536)
                if not data:
                    return
                conn.sock.sendall(data)
        for tcp in (False, True):
            server = self.serve(echo, tcp)
            with self.assertRaises(heapd.ProtocolError) as cm:
                heapd.connect(server.url, timeout=5)
            self.assertIsInstance(cm.exception, heapd.BadReply)
            self.assertIsInstance(cm.exception, heapd.Error)

    def test_bad_hellos(self):
        bad = [
            dict(protocol_version=2),
            dict(protocol_version=0),
            dict(session_id=""),
            dict(resume_token=""),
            dict(server_version=""),
            dict(session_id="line\nbreak"),
            dict(limits=pb.Limits(max_frame_bytes=100, max_read_bytes=50)),
            dict(limits=pb.Limits(max_frame_bytes=65536, max_read_bytes=0)),
            dict(limits=pb.Limits(max_frame_bytes=65536, max_read_bytes=70000)),
        ]
        for kw in bad:
            server = self.serve(lambda conn, kw=kw: conn.hello(**kw))
            with self.assertRaises(heapd.BadReply, msg=str(kw)):
                heapd.connect(server.url, timeout=5)

    def test_hello_without_limits(self):
        def script(conn):
            req = conn.read_request()
            conn.send(response(req.id, hello=pb.HelloResult(
                session_id="ab", resume_token="cd", server_version="1", protocol_version=1)))
        with self.assertRaises(heapd.BadReply):
            heapd.connect(self.serve(script).url, timeout=5)

    def test_hello_answered_wrongly(self):
        scripts = {
            "wrong id": lambda c, r: c.send(response(r.id + 1, hello=hello_result())),
            "id 0 success": lambda c, r: c.send(response(0, hello=hello_result())),
            "no result": lambda c, r: c.send(response(r.id)),
            "ping result": lambda c, r: c.send(response(r.id, ping=pb.PingResult())),
            "event first": lambda c, r: c.send(frame(pb.ServerFrame(event=pb.Event(
                gc_start=pb.GcStart())))),
            "error with result": lambda c, r: c.send(response(
                r.id, pb.Status(code=23, name="EAUTH"), hello=hello_result())),
            "garbage": lambda c, r: c.send(b"\x00\x00\x00\x03\xff\xff\xff"),
            "huge frame": lambda c, r: c.send((1 << 30).to_bytes(4, "big")),
        }
        for what, answer in scripts.items():
            def script(conn, answer=answer):
                answer(conn, conn.read_request())
                conn.sock.recv(1)  # hold the connection until the client gives up
            server = self.serve(script)
            with self.assertRaises(heapd.BadReply, msg=what):
                heapd.connect(server.url, timeout=5)

    def test_hello_error_is_the_servers(self):
        def script(conn):
            req = conn.read_request()
            conn.send(response(0, pb.Status(code=23, name="EAUTH", message="bad token")))
        with self.assertRaises(heapd.AuthenticationFailed) as cm:
            heapd.connect(self.serve(script).url, timeout=5)
        self.assertIn("bad token", str(cm.exception))

    def test_close_before_or_inside_the_hello(self):
        def silent(conn):
            conn.read_request()
        with self.assertRaises(ConnectionError):
            heapd.connect(self.serve(silent).url, timeout=5)

        def half(conn):
            req = conn.read_request()
            conn.send(response(req.id, hello=hello_result())[:20])
        with self.assertRaises(ConnectionError) as cm:
            heapd.connect(self.serve(half).url, timeout=5)
        self.assertIn("middle of a frame", str(cm.exception))

    # -- responses after the hello ------------------------------------------------------

    def scripted_session(self, answer, then=None):
        """A session whose server answers its first request with ``answer(conn, req)``."""
        def script(conn):
            conn.hello()
            req = conn.read_request()
            if req is None:
                return
            answer(conn, req)
            if then is not None:
                then(conn)
            else:
                conn.sock.recv(1)
        s = heapd.connect(self.serve(script).url, timeout=5)
        self.addCleanup(s._drop)
        return s

    def test_close_mid_frame_is_connection_error(self):
        def answer(conn, req):
            conn.send(response(req.id, ping=pb.PingResult(server_time_unix_ns=5))[:-3])
        s = self.scripted_session(answer, then=lambda conn: None)
        with self.assertRaises(ConnectionError) as cm:
            s.ping()
        self.assertIsInstance(cm.exception, heapd.ConnectionClosed)
        self.assertIn("middle of a frame", str(cm.exception))
        self.assertFalse(s.connected)

    def test_close_between_frames_is_connection_error(self):
        s = self.scripted_session(lambda conn, req: None, then=lambda conn: None)
        with self.assertRaises(ConnectionError):
            s.alloc()
        self.assertFalse(s.connected)

    def test_responses_must_answer_their_request(self):
        wrong = {
            "wrong id": lambda c, r: c.send(response(r.id + 7, ping=pb.PingResult())),
            "no result": lambda c, r: c.send(response(r.id)),
            "another op's result": lambda c, r: c.send(response(
                r.id, getrefcount=pb.ValueResult(value=1))),
            "failure with a result": lambda c, r: c.send(response(
                r.id, pb.Status(code=4, name="ENOOBJ"), ping=pb.PingResult())),
            "unknown result": lambda c, r: c.send(_with_unknown_result(r.id)),
            "undecodable": lambda c, r: c.send(b"\x00\x00\x00\x02\x0a\x09"),
            "over the frame limit": lambda c, r: c.send((65537).to_bytes(4, "big")),
        }
        for what, answer in wrong.items():
            s = self.scripted_session(answer)
            with self.assertRaises(heapd.BadReply, msg=what):
                s.ping()
            self.assertFalse(s.connected, what)
            with self.assertRaises(heapd.ConnectionClosed):
                s.ping()

    def test_result_without_request(self):
        # A response nobody asked for, arriving before the answer to the request.
        def answer(conn, req):
            conn.send(response(req.id - 1, ping=pb.PingResult()) + response(req.id,
                      ping=pb.PingResult()))
        s = self.scripted_session(answer)
        with self.assertRaises(heapd.BadReply):
            s.ping()

    def test_alloc_never_returns_none(self):
        def answer(conn, req):
            conn.send(response(req.id, alloc=pb.HandleResult(handle=0)))
        s = self.scripted_session(answer)
        # A handle of 0 answers "no object": alloc must not turn it into None.
        with self.assertRaises(heapd.BadReply):
            s.alloc()

    def test_servers_last_word(self):
        def answer(conn, req):
            conn.send(response(0, pb.Status(code=31, name="ETIMEDOUT", message="idle")))
        s = self.scripted_session(answer, then=lambda conn: None)
        with self.assertRaises(heapd.IdleTimeout):
            s.ping()
        self.assertFalse(s.connected)

    def test_events_between_responses_are_fine(self):
        def answer(conn, req):
            conn.send(frame(pb.ServerFrame(event=pb.Event(gc_start=pb.GcStart(generation=1))))
                      + response(req.id, ping=pb.PingResult(server_time_unix_ns=42)))
        s = self.scripted_session(answer)
        self.assertEqual(s.ping(), 42)
        self.assertTrue(s.connected)

    def test_pipeline_checks_every_response(self):
        def answer(conn, req):
            second = conn.read_request()
            conn.send(response(req.id, ping=pb.PingResult(server_time_unix_ns=1))
                      + response(second.id, ping=pb.PingResult(server_time_unix_ns=2)))
        s = self.scripted_session(answer)
        with self.assertRaises(heapd.BadReply):
            with s.pipeline() as p:
                p.ping()
                p.getrefcount(s.adopt(5))  # answered with a ping result: wrong


def _with_unknown_result(rid):
    raw = pb.Response(id=rid, status=ok()).SerializeToString() + b"\xfa\x07\x00"
    msg = b"\x0a" + bytes([len(raw)]) + raw
    return len(msg).to_bytes(4, "big") + msg


if __name__ == "__main__":
    unittest.main()
