# SPDX-License-Identifier: MIT
"""test_persist.py: snapshots across restarts and exactly-once re-sends (docs/PERSISTENCE.md).

A SIGTERM saves every session, attached or detached, and a restart brings each back as a
detached session that its token resumes, answering every question as before; the save op
(waited for through server_stats) and a SIGKILL after it: what the save holds survives, what
came after is lost; bad files (truncated, corrupt, another version, foreign, empty, misnamed)
refused with a log line naming them, moved aside, the rest restored; a save that hits a full
disk keeps the previous snapshot and says so; goodbye and kill_session remove the file;
snapshot_interval and snapshot_on_detach; the replay window answers re-sent ids without
running them, EREPLAY past it, across a restart too, and a resume without resend runs ids as
ever.
"""

import glob
import json
import os
import signal
import subprocess
import unittest

import harness
from harness import Daemon, wait_until


def answers(c, handles):
    """What a client can see of a heap, as comparable values."""
    out = [c.ok("gc_get_count"), c.ok("gc_get_threshold"), c.ok("gc_get_stats"),
           c.ok("gc_get_debug"), c.ok("gc_isenabled"), c.ok("gc_get_freeze_count")]
    mode = c.ok("gc_get_mode")
    out.append((mode.mode, mode.increment_objects))
    hs = c.ok("heap_stats")
    out.append(hs)
    for h in handles:
        r = c.call("obj_info", handle=h)
        if r.status.code:
            out.append(("dead", h))
            continue
        out.append(r.obj_info)
        out.append(c.ok("gc_get_referrers", handles=[h], borrow=True))
        if r.obj_info.size:
            out.append(c.ok("read", handle=h, offset=0, length=r.obj_info.size).data)
    out.append(c.ok("gc_garbage", start=0, max=0, borrow=True))
    out.append(c.ok("trace_get_traced_memory"))
    return [x.SerializeToString() if hasattr(x, "SerializeToString") else x for x in out]


def build(c):
    """A heap with cycles, payloads, tags, a weak reference, tracing, thresholds, the
    incremental collector and garbage."""
    c.ok("trace_start")
    hs = []
    for i in range(40):
        hs.append(c.alloc(size=i * 7, slots=i % 4, tag="T%d" % (i % 3), site="app.py:%d" % i,
                          data=bytes([i]) * min(i * 7, 20)))
    for i in range(40):
        if i % 4:
            c.ok("set_slot", handle=hs[i], index=0, target=hs[(i * 7) % 40])
    c.ok("gc_collect", generation=0)
    c.ok("weakref_new", handle=hs[3], notify=True)
    c.ok("gc_set_threshold", threshold=[300, 5, 3])
    c.ok("gc_set_mode", mode=harness.pb.INCREMENTAL, increment_objects=777)
    c.ok("decref", handle=hs[5], n=1)
    c.ok("trace_snapshot")
    return hs


class PersistTest(unittest.TestCase):
    def daemon(self, **cfg):
        base = {"data_dir": "DATA", "session_linger": "60s", "snapshot_interval": 0,
                "admin_tokens": ["adm"]}
        base.update(cfg)
        d = Daemon(base)
        self.addCleanup(d.stop)
        return d.start()

    def resume(self, d, hr, **kw):
        c = d.connect()
        r = c.hello(session_id=hr.session_id, resume_token=hr.resume_token, **kw)
        self.assertEqual(r.status.code, 0, r.status)
        self.assertTrue(r.hello.resumed)
        return c, r.hello

    def files(self, d, pattern="*"):
        return sorted(os.path.basename(p) for p in glob.glob(os.path.join(d.config["data_dir"],
                                                                          pattern)))

    def save(self, d):
        admin = d.session(token="adm")
        sid = admin.ok("save").save_id
        self.assertTrue(wait_until(lambda: admin.ok("server_stats").persist_save_done >= sid,
                                   timeout=20))
        st = admin.ok("server_stats")
        admin.ok("goodbye")
        return st

    # -- restarts -------------------------------------------------------------------------

    def test_sigterm_keeps_attached_and_detached_sessions(self):
        d = self.daemon()
        a = d.session()
        ha = build(a)
        before_a = answers(a, ha)
        b = d.session()
        hb = build(b)
        before_b = answers(b, hb)
        b.close()  # detached when the SIGTERM comes
        d.wait_log("session %s detached" % b.hello_result.session_id)
        hra, hrb = a.hello_result, b.hello_result
        d.restart()
        d.wait_log(r"restored 2 sessions from ")
        self.assertEqual(self.files(d), sorted([hra.session_id + ".snap",
                                                hrb.session_id + ".snap"]))
        for hr, hs, before in ((hra, ha, before_a), (hrb, hb, before_b)):
            c, h2 = self.resume(d, hr)
            self.assertEqual(answers(c, hs), before)
            # It goes on as it would have: collect(2) finds the same as on a twin built anew.
            twin = d.session()
            th = build(twin)
            for x, y in ((c, hs), (twin, th)):
                x.ok("decref", handle=y[1], n=1)
            self.assertEqual(c.ok("gc_collect", generation=2).value,
                             twin.ok("gc_collect", generation=2).value)
            self.assertEqual(c.ok("heap_stats").objects, twin.ok("heap_stats").objects)
            twin.ok("goodbye")
        st = d.session(token="adm").ok("server_stats")
        self.assertEqual(st.persist_restored, 2)

    def test_restored_session_lingers_then_goes(self):
        d = self.daemon(session_linger="1s")
        c = d.session()
        c.alloc(size=8)
        hr = c.hello_result
        d.restart()
        d.wait_log("session %s restored" % hr.session_id)
        d.wait_log("session %s destroyed \\(not resumed" % hr.session_id, timeout=10)
        # Gone for good: its file too, so the next start does not bring it back.
        self.assertEqual(self.files(d, "*.snap"), [])
        r = d.connect().hello(session_id=hr.session_id, resume_token=hr.resume_token)
        self.assertEqual(r.status.name, "ENOSESSION")

    def test_goodbye_and_kill_remove_the_snapshot(self):
        d = self.daemon()
        c, k = d.session(), d.session()
        c.alloc(size=1)
        k.alloc(size=1)
        self.save(d)
        self.assertIn(c.hello_result.session_id + ".snap", self.files(d))
        c.ok("goodbye")
        admin = d.session(token="adm")
        admin.ok("kill_session", session_id=k.hello_result.session_id)
        wait_until(lambda: self.files(d, "*.snap") == [], timeout=5)
        self.assertEqual(self.files(d, "*.snap"), [])

    def test_save_then_sigkill_keeps_what_was_saved(self):
        d = self.daemon()
        c = d.session()
        h = [c.alloc(size=16, data=b"saved") for _ in range(5)]
        st = self.save(d)
        self.assertGreaterEqual(st.persist_saves_ok, 1)
        self.assertEqual(st.persist_saves_failed, 0)
        for _ in range(7):
            c.alloc(size=16, data=b"lost")  # acknowledged after the save: SIGKILL loses these
        c.ok("write", handle=h[0], offset=0, data=b"LOST!")
        hr = c.hello_result
        d.restart(signal.SIGKILL)
        c2, _ = self.resume(d, hr)
        self.assertEqual(c2.ok("heap_stats").objects, 5)
        self.assertEqual(c2.ok("read", handle=h[0], offset=0, length=5).data, b"saved")

    # -- bad files --------------------------------------------------------------------------

    def metric(self, d, name, labels=""):
        """A sample of heapd's /metrics, as operators scrape it."""
        status, _, body = d.http_get("/metrics")
        self.assertEqual(status, 200)
        for line in body.decode().splitlines():
            if line.startswith(name + labels + " "):
                return int(float(line.split()[1]))
        self.fail("no %s%s in /metrics" % (name, labels))

    def info(self, d):
        """server_info's persistence section (heapctl info persistence), as a dict."""
        admin = d.session(token="adm")
        sec = admin.ok("server_info", section="persistence").sections[0]
        admin.ok("goodbye")
        return {f.key: getattr(f, f.WhichOneof("value")) for f in sec.fields}

    def doctor(self, d):
        status, _, body = d.http_get("/api/doctor")
        self.assertEqual(status, 200)
        return {f["rule"]: f for f in json.loads(body)["findings"]}

    def test_bad_files_are_refused_and_moved_aside(self):
        d = self.daemon(http=["127.0.0.1:0"])
        c = d.session()
        c.alloc(size=100, slots=2)
        good = c.hello_result.session_id
        self.save(d)
        dd = d.config["data_dir"]
        raw = open(os.path.join(dd, good + ".snap"), "rb").read()

        def put(name, data):
            with open(os.path.join(dd, name + ".snap"), "wb") as f:
                f.write(data)
        put("a" * 16, raw[:len(raw) // 2])                              # truncated
        put("b" * 16, raw[:200] + bytes([raw[200] ^ 0x40]) + raw[201:])  # a flipped bit
        put("c" * 16, raw[:8] + b"\x02\x00\x00\x00" + raw[12:])         # another version
        put("d" * 16, b"#!/bin/sh\necho this is not a snapshot\n")      # foreign
        put("e" * 16, b"")                                               # empty
        put("f" * 16, raw)                                               # someone else's
        d.restart()
        reasons = {"a": "truncated", "b": "checksum mismatch", "c": "version 2; this heapd reads version 1",
                   "d": "not a heapd snapshot", "e": "empty file", "f": "it holds session " + good}
        for k, why in reasons.items():
            line = d.wait_log("refusing snapshot .*/%s.snap: " % (k * 16))
            self.assertIn(why, line)
            self.assertIn("moved to", line)
        self.assertEqual(self.files(d, "*.snap"), [good + ".snap"])
        self.assertEqual(len(self.files(d, "*.corrupt")), 6)
        c2, _ = self.resume(d, c.hello_result)
        self.assertEqual(c2.ok("heap_stats").objects, 1)
        st = d.session(token="adm").ok("server_stats")
        self.assertEqual((st.persist_restored, st.persist_refused), (1, 6))
        # Operators see the same: /metrics, the overview's JSON and the doctor.
        self.assertEqual(self.metric(d, "heapd_snapshot_restored_sessions"), 1)
        self.assertEqual(self.metric(d, "heapd_snapshot_refused_files"), 6)
        self.assertEqual(self.metric(d, "heapd_snapshot_enabled"), 1)
        o = json.loads(d.http_get("/api/overview")[2])["persistence"]
        self.assertEqual((o["enabled"], o["restored"], o["refused"]), (True, 1, 6))
        self.assertIn("6 snapshot files in data_dir could not be read",
                      self.doctor(d)["snapshot_refused"]["evidence"])

    def test_disk_full_keeps_the_previous_snapshot(self):
        d = self.daemon(http=["127.0.0.1:0"])
        c = d.session()
        h = c.alloc(size=8, data=b"first")
        st = self.save(d)
        self.assertEqual(self.metric(d, "heapd_snapshot_saves_total", '{result="ok"}'),
                         st.persist_saves_ok)
        self.assertGreater(self.metric(d, "heapd_snapshot_written_bytes_total"), 0)
        self.assertGreater(self.metric(d, "heapd_snapshot_last_success_timestamp_seconds"), 0)
        self.assertNotIn("snapshot_failing", self.doctor(d))
        self.assertEqual(self.info(d)["last_save_status"], "ok")
        sid = c.hello_result.session_id
        c.ok("write", handle=h, offset=0, data=b"later")
        # The save's temporary file is /dev/full: every write fails with ENOSPC.
        tmp = os.path.join(d.config["data_dir"], ".%s.snap.tmp" % sid)
        os.symlink("/dev/full", tmp)
        st = self.save(d)
        self.assertEqual(st.persist_saves_failed, 1)
        self.assertGreater(st.persist_last_fail_unix, 0)
        line = d.wait_log("saving session %s failed" % sid)
        self.assertIn("No space left on device", line)
        self.assertIn("the previous snapshot is kept", line)
        self.assertFalse(os.path.lexists(tmp))  # the failed save cleaned up after itself
        self.assertEqual(self.metric(d, "heapd_snapshot_saves_total", '{result="failed"}'), 1)
        self.assertGreater(self.metric(d, "heapd_snapshot_last_failure_timestamp_seconds"), 0)
        info = self.info(d)
        self.assertEqual((info["enabled"], info["saves_failed"], info["last_save_status"]),
                         (1, 1, "err"))
        self.assertIn("No space left on device", info["last_save_error"])
        self.assertEqual(info["data_dir"], d.config["data_dir"])
        f = self.doctor(d)["snapshot_failing"]
        self.assertEqual(f["severity"], "critical")
        self.assertIn("No space left on device", f["evidence"])
        hr = c.hello_result
        d.restart(signal.SIGKILL)
        c2, _ = self.resume(d, hr)
        self.assertEqual(c2.ok("read", handle=h, offset=0, length=5).data, b"first")

    # -- schedules ----------------------------------------------------------------------------

    def test_interval_and_on_detach(self):
        d = self.daemon(snapshot_interval="200ms")
        c = d.session()
        c.alloc(size=8)
        self.assertTrue(wait_until(lambda: self.files(d, "*.snap"), timeout=10))
        st = d.session(token="adm").ok("server_stats")
        self.assertGreaterEqual(st.persist_background_saves, 1)
        d2 = self.daemon(snapshot_on_detach=True)
        e = d2.session()
        e.alloc(size=8)
        e.close()
        self.assertTrue(wait_until(lambda: self.files(d2, "*.snap"), timeout=10))

    def test_heapctl_save(self):
        heapctl = os.path.join(os.path.dirname(harness.HEAPD_BIN), "heapctl")
        d = self.daemon()
        c = d.session()
        c.alloc(size=8)
        run = lambda *a: subprocess.run([heapctl, "--connect", "unix:" + d.sock_path, "--token",
                                         "adm"] + list(a), capture_output=True, text=True,
                                        timeout=60)
        r = run("save")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"save \d+: [12] sessions? saved, 0 failed")
        self.assertIn(c.hello_result.session_id + ".snap", self.files(d))
        r = run("server")
        self.assertRegex(r.stdout, r"persist_saves_ok\s+[12]\b")
        # A save that cannot be written: exit status and message say so.
        os.symlink("/dev/full", os.path.join(d.config["data_dir"],
                                             ".%s.snap.tmp" % c.hello_result.session_id))
        c.alloc(size=8)
        r = run("save")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("could not be written", r.stderr)

    def test_heapctl_reconnect_rides_through_a_restart(self):
        heapctl = os.path.join(os.path.dirname(harness.HEAPD_BIN), "heapctl")

        def shell(*extra):
            return subprocess.Popen([heapctl, "--connect", "unix:" + d.sock_path] + list(extra)
                                    + ["shell"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)

        def say(p, line):
            p.stdin.write(line + "\n")
            p.stdin.flush()
            return p.stdout.readline()

        d = self.daemon()
        p, q = shell("--reconnect", "20"), shell()
        self.assertIn("a = ", say(p, "alloc a size=5 data=hello"))
        self.assertIn("b = ", say(q, "alloc b size=5 data=hello"))
        d.restart()
        # With --reconnect the shell resumed its session: its object is there, by its name.
        out, err = p.communicate("read a 0 5\n", timeout=30)
        self.assertEqual((p.returncode, out), (0, '"hello"\n'), err)
        # Without, the command fails (the connection is lost) and the shell says so.
        out, err = q.communicate("read b 0 5\n", timeout=30)
        self.assertNotEqual(q.returncode, 0)
        self.assertIn("connection", err.lower())

    def test_save_without_data_dir(self):
        d = Daemon({"admin_tokens": ["adm"]})
        self.addCleanup(d.stop)
        d.start()
        r = d.session(token="adm").call("save")
        self.assertEqual(r.status.name, "EIO")

    # -- exactly once ---------------------------------------------------------------------

    def send_without_reading(self, c, n):
        ids = [c.send("alloc", size=8, slots=1) for _ in range(n)]
        # Read nothing: the connection drops with the answers unread (they all ran).
        c.ok("ping")  # ... once the server has run them all
        return ids

    def test_resent_ids_are_answered_from_the_window(self):
        d = self.daemon(replay_window=8)
        c = d.session()
        hr = c.hello_result
        first = [c.alloc(size=8) for _ in range(3)]
        ids = [c.send("alloc", size=8) for _ in range(5)]
        answers_ = [c.recv_response() for _ in ids]
        c.close()
        d.wait_log("session %s detached" % hr.session_id)
        c2, h2 = self.resume(d, hr, resend=True)
        self.assertEqual(h2.last_id, ids[-1])
        self.assertEqual(h2.limits.replay_window, 8)
        # The re-sends come back as the first answers did: same handles, no new objects.
        for rid, first_answer in zip(ids, answers_):
            c2.send_request(harness.make_request(rid, "alloc", size=8))
            self.assertEqual(c2.recv_response(), first_answer)
        c2.next_id = ids[-1] + 1
        self.assertEqual(c2.ok("heap_stats").objects, 8)
        # An id older than the window: refused, never run again.
        c3 = d.connect()
        mark = len(d.log())
        c2.close()
        d.wait_log("session %s detached" % hr.session_id, start=mark)
        r = c3.hello(session_id=hr.session_id, resume_token=hr.resume_token, resend=True)
        self.assertEqual(r.status.code, 0, r.status)
        c3.send_request(harness.make_request(1, "alloc", size=8))
        resp = c3.recv_response()
        self.assertEqual(resp.status.name, "EREPLAY")
        self.assertIn("older than the replay window", resp.status.message)
        c3.next_id = 1000
        self.assertEqual(c3.ok("heap_stats").objects, 8)
        del first

    def test_window_survives_a_restart(self):
        d = self.daemon()
        c = d.session()
        hr = c.hello_result
        rid = c.send("alloc", size=8, data=b"once")
        answer = c.recv_response()
        d.restart()
        c2, h2 = self.resume(d, hr, resend=True)
        self.assertEqual(h2.last_id, rid)
        c2.send_request(harness.make_request(rid, "alloc", size=8, data=b"once"))
        self.assertEqual(c2.recv_response(), answer)
        c2.next_id = rid + 1
        self.assertEqual(c2.ok("heap_stats").objects, 1)

    def test_resume_without_resend_runs_every_id(self):
        d = self.daemon()
        c = d.session()
        hr = c.hello_result
        c.alloc(size=8)
        c.close()
        d.wait_log("session %s detached" % hr.session_id)
        c2, _ = self.resume(d, hr)  # a new process resuming: its ids start again at 1
        c2.alloc(size=8)
        self.assertEqual(c2.ok("heap_stats").objects, 2)

    # -- with a request off the loop (issue 11) --------------------------------------------

    def test_sigterm_during_a_long_batch_saves_the_session_after_it(self):
        d = self.daemon(workers=1, offload_above=1000)
        c = d.session()
        hs = [r.alloc.handle for r in c.ok("batch", ops=[
            harness.make_request(i + 1, "alloc", slots=1) for i in range(3000)]).results]
        c.ok("batch", ops=[harness.make_request(i + 1, "set_slot", handle=hs[i], index=0,
                                                target=hs[(i + 1) % 3000])
                           for i in range(3000)])
        hr = c.hello_result
        mark = len(d.log())
        rq = c.req("batch", ops=[harness.make_request(i + 1, "gc_collect", generation=2)
                                 for i in range(20000)])
        c.send_request(rq)
        d.wait_log(r"session %s: \d+ bytes of requests run off the loop" % hr.session_id,
                   start=mark)
        # The shutdown saves every other session at once, this one once its batch stopped
        # (never beside it: its heap was the job's); it comes back whole.
        d.restart()
        d.wait_log(r"restored 1 session")
        c2, _ = self.resume(d, hr)
        self.assertEqual(c2.ok("heap_stats").objects, 3000)
        self.assertEqual(c2.ok("getrefcount", handle=hs[0]).value, 2)
        self.assertEqual(c2.ok("gc_collect", generation=2).value, 0)


if __name__ == "__main__":
    harness.main()
