# SPDX-License-Identifier: MIT
"""test_doctor.py: the memory doctor against a real heapd: /api/doctor and heapctl doctor.

Each situation a client can make in a moment is made here, in its own session, and the
doctor must name it, for that session, with its figures: a healthy heap gets "no problems
found"; DEBUG_SAVEALL filling gc.garbage; uncollectable cycles (legacy finalizers);
automatic collection off while containers pile up; a session near session_max_objects;
heavy fragmentation after a burst is freed; many detached sessions. A session's findings need
an admin token. The rules that need minutes (tracing on for long, a site growing over
samples, full collections per minute, long pauses, the memory cap) are tested on built
figures in tests/server/test_doctor.c.
"""

import json
import os
import subprocess
import sys

import harness as h
from harness import pb

ADMIN = "doctor-admin"
HEAPCTL = os.environ.get("HEAPCTL_BIN", "")


def pipelined(c, reqs):
    c.send_raw(b"".join(h.frame(pb.ClientFrame(request=r).SerializeToString()) for r in reqs))
    for r in reqs:
        resp = c.recv_response()
        assert resp.status.code == 0, (resp.status.name, resp.status.message)


class DoctorTest(h.unittest.TestCase):
    def setUp(self):
        self.d = h.Daemon({"http": ["127.0.0.1:0"], "admin_tokens": [ADMIN],
                           "session_max_objects": 5000, "session_linger": "60s"}).start()
        self.addCleanup(self.d.stop)

    def doctor(self, session=None, fmt="json", token=ADMIN):
        q = "/api/doctor?format=" + fmt + ("&session=" + session if session else "")
        status, _, body = self.d.http_get(q, headers={"Authorization": "Bearer " + token})
        self.assertEqual(status, 200, body)
        return json.loads(body) if fmt == "json" else body.decode()

    def finding(self, rule, session):
        """Waits (snapshots are a second old at most) for rule's finding on session."""
        def seen():
            for f in self.doctor()["findings"]:
                if f["rule"] == rule and f["session"] == session:
                    return f
        f = h.wait_until(seen)
        self.assertIsNotNone(f, "no %s finding for %s: %s" % (rule, session, self.doctor()))
        self.assertTrue(f["evidence"] and f["advice"] and f["title"])
        return f

    def sid(self, s):
        return s.hello_result.session_id

    def test_healthy_heap(self):
        s = self.d.session()
        a, b = s.alloc(slots=1, tag="Node"), s.alloc(slots=1, tag="Node")
        s.ok("set_slot", handle=a, index=0, target=b)
        s.ok("gc_collect")
        self.assertTrue(h.wait_until(
            lambda: any(x["id"] == self.sid(s) for x in json.loads(
                self.d.http_get("/api/sessions")[2])["sessions"])))
        text = self.doctor(fmt="text")
        self.assertEqual(text, "heapd memory doctor: no problems found (1 session)\n")
        d = self.doctor(session=self.sid(s))
        self.assertEqual(d["findings"], [])
        self.assertEqual(d["summary"], "no problems found (session %s)" % self.sid(s))
        if HEAPCTL:
            r = subprocess.run([HEAPCTL, "doctor", "--http", "%s:%d" % self.d.http_addr],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual((r.returncode, r.stdout), (0, text), r.stderr)

    def test_saveall_and_uncollectable(self):
        save, legacy = self.d.session(), self.d.session()
        save.ok("gc_set_debug", flags=32)
        for s, flags in ((save, 0), (legacy, 2)):
            a, b = s.alloc(slots=1, flags=flags), s.alloc(slots=1)
            s.ok("set_slot", handle=a, index=0, target=b)
            s.ok("set_slot", handle=b, index=0, target=a)
            s.ok("decref", handle=a)
            s.ok("decref", handle=b)
            s.ok("gc_collect")
        f = self.finding("saveall_garbage", self.sid(save))
        self.assertIn("gc.garbage holds 2 objects", f["evidence"])
        f = self.finding("uncollectable", self.sid(legacy))
        self.assertIn("2 uncollectable objects found in the last minute", f["evidence"])
        self.assertNotIn(self.sid(legacy), [x["session"] for x in self.doctor()["findings"]
                                            if x["rule"] == "saveall_garbage"])

    def test_gc_disabled_with_containers_piling_up(self):
        s = self.d.session()
        s.ok("gc_disable")
        pipelined(s, [s.req("alloc", slots=1) for _ in range(4000)])
        # 4000 < 10 x 700: not yet.
        self.assertNotIn("gc_disabled", [x["rule"] for x in self.doctor()["findings"]])
        s.ok("gc_set_threshold", threshold=[300])
        f = self.finding("gc_disabled", self.sid(s))
        self.assertIn("4000 containers were allocated since the last collection", f["evidence"])

    def test_near_the_object_limit(self):
        s = self.d.session()
        pipelined(s, [s.req("alloc", size=8) for _ in range(4600)])
        f = self.finding("near_limit", self.sid(s))
        self.assertIn("4600 objects, 92% of session_max_objects (5000)", f["evidence"])

    def test_fragmentation_after_a_burst(self):
        s = self.d.session()
        handles = []
        for _ in range(20):
            batch = [s.req("alloc", size=400) for _ in range(240)]
            s.send_raw(b"".join(h.frame(pb.ClientFrame(request=r).SerializeToString())
                                for r in batch))
            handles += [s.recv_response().alloc.handle for _ in batch]
        # Free all but every 50th: the survivors pin their pools.
        pipelined(s, [s.req("decref", handle=x) for i, x in enumerate(handles) if i % 50])
        f = self.finding("fragmentation", self.sid(s))
        self.assertIn("432-byte blocks", f["evidence"])

    def test_many_detached_sessions(self):
        held = self.d.session()
        for _ in range(10):
            self.d.session().close()
        f = self.finding("detached", "")
        self.assertRegex(f["evidence"], r"^1\d of 1\d sessions are detached")
        held.ok("ping")

    def test_a_sessions_page_needs_an_admin(self):
        s = self.d.session()
        s.alloc(size=10, tag="Node")
        path = "/api/session?id=" + self.sid(s)
        status, headers, _ = self.d.http_get(path)
        self.assertEqual(status, 401)
        self.assertIn("Bearer", headers["WWW-Authenticate"])
        self.assertEqual(self.d.http_get(path, headers={"Authorization": "Bearer nope"})[0], 401)
        for creds in ({"Authorization": "Bearer " + ADMIN}, {"Cookie": "a=b; heapd_admin=" + ADMIN}):
            # The first look asks the owner worker for the detail (503, Retry-After: 1).
            got = h.wait_until(lambda: self.d.http_get(path, headers=creds))
            status, headers, body = got
            self.assertIn(status, (200, 503))
            if status == 503:
                self.assertEqual(headers["Retry-After"], "1")
            got = h.wait_until(lambda: (lambda r: r if r[0] == 200 else None)(
                self.d.http_get(path, headers=creds)))
            self.assertIsNotNone(got)
            detail = json.loads(got[2])
            self.assertEqual(detail["id"], self.sid(s))
            self.assertEqual([t["key"] for t in detail["tags"]], ["Node"])
            self.assertEqual(len(detail["map"]["arenas"]), detail["heap"]["arenas_current"])
        status, _, _ = self.d.http_get("/api/session?id=ffffffffffffffff",
                                       headers={"Authorization": "Bearer " + ADMIN})
        self.assertEqual(status, 404)

    def test_a_sessions_findings_need_an_admin(self):
        s = self.d.session()
        status, headers, _ = self.d.http_get("/api/doctor?session=" + self.sid(s))
        self.assertEqual(status, 401)
        self.assertIn("Bearer", headers["WWW-Authenticate"])
        status, _, _ = self.d.http_get("/api/doctor?session=" + self.sid(s),
                                       headers={"Cookie": "heapd_admin=" + ADMIN})
        self.assertEqual(status, 200)
        self.assertEqual(self.d.http_get("/api/doctor?session=ffffffffffffffff",
                                         headers={"Authorization": "Bearer " + ADMIN})[0], 404)
        if HEAPCTL:
            addr = "%s:%d" % self.d.http_addr
            r = subprocess.run([HEAPCTL, "doctor", "--http", addr, "--session", self.sid(s)],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 5, r.stdout + r.stderr)  # EAUTH's exit status
            self.assertIn("admin token", r.stderr)
            r = subprocess.run([HEAPCTL, "--token", ADMIN, "--json", "doctor", "--http", addr,
                                "--session", self.sid(s)],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout)["doctor"]["findings"], [])


if __name__ == "__main__":
    h.main()
