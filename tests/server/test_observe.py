# SPDX-License-Identifier: MIT
"""test_observe.py: what operators watch: server_info, the slowlog and monitors.

The slowlog is read with a tiny threshold (1 us: a request that allocates and zeroes 8 MiB is
always slower) and a small ring; monitors are checked for order and completeness, and for the
one promise that matters under load: a monitor that does not read never slows the sessions it
watches. That is asserted as progress and accounting (every request of the load answered,
every record either delivered or counted as dropped), never as a duration.
"""

import signal
import socket
import unittest

import harness as h
from harness import pb

ADMIN = "adm1n"
SECTIONS = ["server", "clients", "memory", "gc", "limits", "stats", "persistence", "cluster"]


def fields(result):
    """{section: {key: value}} of a ServerInfoResult."""
    return {s.name: {f.key: getattr(f, f.WhichOneof("value")) for f in s.fields}
            for s in result.sections}


def records(c, n):
    """The next n monitor records on c (a monitoring connection)."""
    got = []
    while len(got) < n:
        f = c.recv_frame()
        if f.WhichOneof("kind") == "monitor":
            got.append(f.monitor)
    return got


class InfoTest(unittest.TestCase):
    def test_sections(self):
        with h.Daemon({"admin_tokens": [ADMIN], "max_sessions": 77}) as d:
            adm = d.session(token=ADMIN)
            v = d.session(client_name="victim")
            for _ in range(10):
                v.alloc(size=1000)
            info = adm.ok("server_info")
            self.assertEqual([s.name for s in info.sections], SECTIONS)
            got = fields(info)
            self.assertEqual(got["server"]["version"], adm.hello_result.server_version)
            self.assertEqual(got["server"]["workers"], 2)
            self.assertIn("unix " + d.sock_path, got["server"]["listeners"])
            self.assertEqual(got["clients"]["sessions"], 2)
            self.assertEqual(got["limits"]["max_sessions"], 77)
            self.assertEqual(got["persistence"]["enabled"], 0)
            self.assertGreater(got["memory"]["rss_bytes"], 0)

            def published():
                m = fields(adm.ok("server_info", section="memory"))["memory"]
                return m if m["objects"] == 10 else None
            m = h.wait_until(published)
            self.assertIsNotNone(m, "the counters were never published")
            self.assertEqual(list(fields(adm.ok("server_info", section="memory"))), ["memory"])
            self.assertEqual(m["largest_session"], v.hello_result.session_id)
            self.assertEqual(m["session_bytes_max"], m["object_bytes"])
            self.assertGreaterEqual(m["heap_bytes"], m["object_bytes"])
            self.assertGreater(m["fragmentation_ratio"], 1.0)  # RSS over a few KiB of objects
            self.assertLessEqual(m["session_bytes_p50"], m["session_bytes_p90"])
            # The collector's figures are the workers' own counters, as /metrics shows them.
            v.ok("gc_collect", generation=2)
            g = fields(adm.ok("server_info", section="gc"))["gc"]
            self.assertEqual(g["collections_gen2"], 1)
            self.assertEqual(g["collections"], g["collections_gen0"] + g["collections_gen1"] + 1)
            self.assertGreater(g["gc_pause_ns_total"], 0)
            def paused():  # the longest pause, from the next snapshot of the session
                g = fields(adm.ok("server_info", section="gc"))["gc"]
                return g if g["gc_pause_ns_max"] > 0 else None
            self.assertIsNotNone(h.wait_until(paused))
            st = fields(adm.ok("server_info", section="stats"))["stats"]
            self.assertGreater(st["requests"], 10)
            self.assertGreater(st["bytes_in"], 0)
            self.assertGreater(st["bytes_out"], 0)
            cl = fields(adm.ok("server_info", section="clients"))["clients"]
            self.assertGreaterEqual(cl["connections_accepted"], 2)
            self.assertEqual(cl["connections_rejected"], 0)
            r = adm.call("server_info", section="nope")
            self.assertEqual(r.status.name, "EINVAL")
            self.assertIn("persistence", r.status.message)
            self.assertEqual(v.call("server_info").status.name, "EPERM")


class SlowlogTest(unittest.TestCase):
    def test_capture_ring_and_reset(self):
        cfg = {"admin_tokens": [ADMIN], "slowlog_threshold_us": 1, "slowlog_max_len": 4}
        with h.Daemon(cfg) as d:
            adm = d.session(token=ADMIN)
            v = d.session(client_name="slowpoke")
            big = v.alloc(size=8 << 20)  # zeroes 8 MiB: well over 1 us
            log = adm.ok("slowlog_get", count=10)
            e = [x for x in log.entries if x.op == "alloc"][0]
            self.assertEqual((e.session_id, e.client_name), (v.hello_result.session_id,
                                                             "slowpoke"))
            self.assertIn("size=8388608", e.args)
            self.assertGreaterEqual(e.duration_us, 1)
            self.assertGreater(e.time_unix_us, 1_600_000_000 * 10**6)
            self.assertTrue(e.peer.startswith("unix:pid="))
            self.assertEqual(e.status, 0)
            # A failing request is logged with its status.
            self.assertEqual(v.call("read", handle=big, offset=0, length=1 << 30).status.name,
                             "ERANGE")
            # The ring keeps the newest 4, newest first; ids keep counting.
            for _ in range(10):
                v.alloc(size=4 << 20)
            log = adm.ok("slowlog_get", count=100)
            self.assertEqual((len(log.entries), log.len), (4, 4))
            ids = [x.id for x in log.entries]
            self.assertEqual(ids, sorted(ids, reverse=True))
            self.assertGreaterEqual(log.total, 12)
            self.assertEqual(len(adm.ok("slowlog_get", count=2).entries), 2)
            adm.ok("slowlog_reset")
            log = adm.ok("slowlog_get")
            self.assertEqual(log.len, len(log.entries))
            self.assertLessEqual(log.len, 1)  # at most the reset itself, or this get
            self.assertGreaterEqual(log.total, 12)
            self.assertEqual(v.call("slowlog_get").status.name, "EPERM")
            # Reloadable: max_len 0 turns it off.
            d.write_config(dict(d.config, slowlog_max_len=0))
            d.signal(signal.SIGHUP)
            d.wait_log(r"config reload: slowlog_max_len: 4 -> 0")
            def off():  # the workers apply a reload after the log line: ask until they have
                before = adm.ok("slowlog_get").total
                v.ok("decref", handle=v.alloc(size=8 << 20))
                return adm.ok("slowlog_get").total == before
            self.assertTrue(h.wait_until(off))
            before = adm.ok("slowlog_get").total
            v.alloc(size=8 << 20)
            self.assertEqual(adm.ok("slowlog_get").total, before)


class MonitorTest(unittest.TestCase):
    def test_every_request_in_order(self):
        with h.Daemon({"admin_tokens": [ADMIN]}) as d:
            mon = d.session(token=ADMIN, client_name="watcher")
            self.assertEqual(mon.call("monitor").status.name, "OK")
            self.assertEqual(mon.call("monitor").status.name, "EINVAL")  # and not shown
            v = d.session(client_name="busy")
            a = v.alloc(size=16, slots=2, tag="Node")
            v.ok("set_slot", handle=a, index=0, target=a)
            v.call("decref", handle=12345)
            v.ok("batch", ops=[v.req("ping"), v.req("gc_get_count")])
            got = records(mon, 4)
            self.assertEqual([r.op for r in got], ["alloc", "set_slot", "decref", "batch"])
            self.assertTrue(all(r.session_id == v.hello_result.session_id for r in got))
            self.assertTrue(all(r.client_name == "busy" for r in got))
            self.assertIn('tag="Node"', got[0].args)
            self.assertIn("size=16", got[0].args)
            self.assertIn("target=0x", got[1].args)  # handles in hex, as heapctl prints them
            self.assertEqual(got[2].status, 4)  # ENOOBJ
            self.assertIn("ops=[ping,gc_get_count]", got[3].args)
            self.assertEqual(sum(r.dropped for r in got), 0)
            self.assertEqual(v.call("monitor").status.name, "EPERM")

    def test_a_slow_monitor_never_stalls_the_server(self):
        """A monitor that reads nothing while another session runs a long pipeline: the
        pipeline is answered in full and in order, and every one of its requests is either
        delivered to the monitor, in order, or counted in a record's dropped."""
        cfg = {"admin_tokens": [ADMIN], "monitor_buffer": "4KiB",
               "output_buffer_limit": "64KiB", "workers": 2}
        with h.Daemon(cfg) as d:
            mon = d.connect()
            mon.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self.assertEqual(mon.hello(token=ADMIN).status.name, "OK")
            self.assertEqual(mon.call("monitor").status.name, "OK")
            load = d.session(client_name="load")
            n, chunk = 6000, 500
            for _ in range(n // chunk):  # pipelined, a chunk at a time
                reqs = [load.req("ping") for _ in range(chunk)]
                load.send_raw(b"".join(h.frame(pb.ClientFrame(request=r).SerializeToString())
                                       for r in reqs))
                got = [load.recv_response() for _ in reqs]  # progress: all, in order
                self.assertEqual([r.id for r in got], [r.id for r in reqs])
            # The drops after the last record queued are told by the next record: markers
            # from the load until one gets through. (A read that times out only sends another
            # marker; nothing waits for a set time.)
            seen, dropped, markers = [], 0, 1
            load.ok("gc_get_count")
            mon.sock.settimeout(2.0)
            while not seen or seen[-1].op != "gc_get_count":
                try:
                    r = records(mon, 1)[0]
                except socket.timeout:
                    load.ok("gc_get_count")
                    markers += 1
                    continue
                seen.append(r)
                dropped += r.dropped
            mon.sock.settimeout(h.IO_TIMEOUT)
            self.assertGreater(dropped, 0, "a 4 KiB buffer held 6000 records?")
            self.assertEqual(len(seen) + dropped, n + markers)  # none lost uncounted
            pings = [r for r in seen if r.op == "ping"]
            self.assertGreater(len(pings), 0)
            times = [r.time_unix_us for r in seen]
            self.assertEqual(times, sorted(times))  # one session's requests, in order
            adm = d.session(token=ADMIN)
            stats = fields(adm.ok("server_info", section="stats"))["stats"]
            self.assertGreaterEqual(stats["monitor_dropped"], dropped)
            self.assertEqual(fields(adm.ok("server_info", section="clients"))["clients"]
                             ["monitors"], 1)
            mon.close()  # a monitor that goes away mid-stream
            load.ok("ping")
            self.assertEqual(h.wait_until(lambda: fields(adm.ok(
                "server_info", section="clients"))["clients"]["monitors"] == 0), True)


if __name__ == "__main__":
    h.main()
