# SPDX-License-Identifier: MIT
"""test_badinput.py: malformed input against the real heapd.

A malformed frame, an impossible length or an undecodable message gets an error response
where one can be sent and the connection is closed; the session's heap is unchanged and
other sessions notice nothing. Also: random garbage on many connections does not hurt the
server.
"""

import os
import random
import struct

import harness as h
from harness import pb


class BadInputTest(h.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = h.Daemon().start()

    @classmethod
    def tearDownClass(cls):
        cls.assert_clean_exit(cls.d.stop())

    @staticmethod
    def assert_clean_exit(rc):
        assert rc == 0, "heapd exited %r" % rc

    def setUp(self):
        # A bystander session: whatever happens to the others, it must not notice.
        self.other = self.d.session()
        self.keep = self.other.alloc(size=8, data=b"safe")

    def tearDown(self):
        self.assertEqual(self.other.ok("read", handle=self.keep, offset=0, length=4).data,
                         b"safe")
        self.assertEqual(self.other.ok("heap_stats").objects, 1)
        self.other.close()

    def closed_with(self, c, names):
        self.assertEqual([r.status.name for r in c.expect_closed()], names)

    def test_first_request_not_hello(self):
        c = self.d.connect()
        rid = c.send("ping")
        r = c.recv_response()
        self.assertEqual((r.id, r.status.name), (rid, "EHELLO"))
        self.closed_with(c, [])

    def test_first_frame_undecodable(self):
        c = self.d.connect()
        c.send_raw(h.frame(b"\xff\xff\xff\xff garbage"))
        self.closed_with(c, ["EPROTO"])

    def test_wrong_protocol_version(self):
        c = self.d.connect()
        self.assertEqual(c.hello(protocol_version=7).status.name, "EVERSION")
        self.closed_with(c, [])

    def test_zero_length_frame(self):
        c = self.d.session()
        c.send_raw(struct.pack(">I", 0))
        self.closed_with(c, ["EPROTO"])

    def test_impossible_length(self):
        c = self.d.session()
        c.send_raw(struct.pack(">I", 0xFFFFFFFF) + b"abc")
        self.closed_with(c, ["EFRAME"])

    def test_undecodable_request_leaves_the_heap_alone(self):
        c = self.d.session()
        hr = c.hello_result
        o = c.alloc(size=8, data=b"mine")
        c.send_raw(h.frame(b"\x0a\x05\x08"))  # a truncated nested message
        self.closed_with(c, ["EPROTO"])
        self.d.wait_log("undecodable request; closing")
        c2 = self.d.connect()
        self.assertEqual(c2.hello(session_id=hr.session_id,
                                  resume_token=hr.resume_token).status.code, 0)
        self.assertEqual(c2.ok("read", handle=o, offset=0, length=4).data, b"mine")
        self.assertEqual(c2.ok("heap_stats").objects, 1)

    def test_responses_before_a_bad_frame_are_sent(self):
        c = self.d.session()
        good = [c.req("alloc", size=8) for _ in range(3)]
        data = b"".join(h.frame(pb.ClientFrame(request=r).SerializeToString()) for r in good)
        c.send_raw(data + struct.pack(">I", 0))
        got = c.expect_closed()
        self.assertEqual([r.status.name for r in got], ["OK", "OK", "OK", "EPROTO"])

    def test_unknown_frame_kind_goes_on(self):
        c = self.d.session()
        c.send_raw(h.frame(b"\x12\x00"))  # ClientFrame field 2: a kind from the future
        r = c.recv_response()
        self.assertEqual(r.status.name, "EUNKNOWN")
        c.ok("ping")

    def test_truncated_frame_then_close(self):
        c = self.d.session()
        c.send_raw(struct.pack(">I", 100) + b"abc")
        c.close()
        self.d.session().ok("ping")

    def test_random_garbage(self):
        rng = random.Random(1234)
        for i in range(150):
            c = self.d.connect()
            if i % 2:
                c.hello()
            blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
            if i % 3 == 0:
                blob = h.frame(blob)  # a well-formed frame around garbage
            c.send_raw(blob)
            c.close()
        s = self.d.session()
        s.ok("ping")


if __name__ == "__main__":
    h.main()
