# SPDX-License-Identifier: MIT
"""abuse.py: the requests of issue 9, each as a hostile client would send it, and what the
server holds while it runs.

Each attack_N(d, ...) takes a running harness.Daemon, does what finding N of issue 9 did (small
requests that made the server hold far more than it charged, or lock others out) and returns a
dict of what it measured: the server's resident set from /proc before, at its peak (VmHWM,
reset through /proc/PID/clear_refs before the attack) and after, and what the session was
charged (heap_charges.total). test_bounds.py asserts a bound on each, one daemon per
item; test_abuse.py runs them all against one daemon and then checks that a fresh session is
served as usual. Run as a script it prints the figures, for docs and closing notes:

    HEAPD_BIN=build/bin/heapd HEAPD_PB2_DIR=build/tests/pb2 \\
        PYTHONPATH=tests/server /usr/bin/python3 tests/server/abuse.py [ITEM...]

Requests are encoded by hand where an attack sends many (protobuf's Python classes take
about 15 us per message; these helpers take about 1).
"""

import os
import socket
import struct
import sys
import threading
import time

import harness as h
from harness import pb

MIB = 1 << 20

# -- the server's memory, from /proc ----------------------------------------------------------


def rss(pid):
    """The process's resident set in bytes (VmRSS)."""
    return _status(pid, "VmRSS")


def peak(pid):
    """The most it was resident since the last reset_peak (VmHWM)."""
    return _status(pid, "VmHWM")


def reset_peak(pid):
    """Sets VmHWM back to the current resident set (Linux: clear_refs 5)."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
    except OSError:
        pass  # not permitted: peak() then reports the process's lifetime peak


def _status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def charged(c):
    """What the session is charged, all it holds counted against max_bytes (heap_charges)."""
    return c.ok("heap_charges").total


class Measure:
    """with Measure(d) as m: ... sets m.before, m.peak, m.after (bytes of RSS)."""

    def __init__(self, d):
        self.pid = d.proc.pid

    def __enter__(self):
        reset_peak(self.pid)
        self.before = rss(self.pid)
        return self

    def __exit__(self, *exc):
        self.peak = peak(self.pid)
        self.after = rss(self.pid)

    def grew(self):
        return self.peak - self.before

    def figures(self):
        return {"rss_before": self.before, "rss_peak": self.peak, "rss_after": self.after}


# -- requests encoded by hand ------------------------------------------------------------------


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def field_varint(n, v):
    return varint(n << 3) + varint(v)


def field_fixed64(n, v):
    return varint(n << 3 | 1) + struct.pack("<Q", v)


def field_bytes(n, b):
    return varint(n << 3 | 2) + varint(len(b)) + b


OP = {f.name: f.number for f in pb.Request.DESCRIPTOR.oneofs_by_name["op"].fields}


def request(rid, op, body=b""):
    """Request { id, <op> { body } } as bytes."""
    return field_varint(1, rid) + field_bytes(OP[op], body)


def frame_of(req):
    return h.frame(field_bytes(1, req))


def batch_frame(rid, reqs):
    return frame_of(request(rid, "batch", b"".join(field_bytes(1, r) for r in reqs)))


def send_batch(c, reqs):
    """Sends one batch of raw requests and returns its response."""
    rid = c.next_id
    c.next_id += 1
    c.send_raw(batch_frame(rid, reqs))
    r = c.recv_response()
    assert r.id == rid, (r.id, rid)
    return r


def alloc_body(size=0, slots=0, tag=b"", site=b"", flags=0):
    b = b""
    if size:
        b += field_varint(1, size)
    if slots:
        b += field_varint(2, slots)
    if tag:
        b += field_bytes(3, tag)
    if site:
        b += field_bytes(4, site)
    if flags:
        b += field_varint(5, flags)
    return b


def allocs(c, bodies, chunk=20000):
    """Allocates one object per alloc body, in batches; returns the handles (0 for a refusal)
    and the first refusal's status name, if any."""
    out, refused = [], None
    for i in range(0, len(bodies), chunk):
        part = bodies[i:i + chunk]
        r = send_batch(c, [request(k, "alloc", b) for k, b in enumerate(part)])
        for res in r.batch.results:
            if res.status.code == 0:
                out.append(res.alloc.handle)
            else:
                out.append(0)
                refused = refused or res.status.name
    return out, refused


def decrefs(c, handles, chunk=25000):
    for i in range(0, len(handles), chunk):
        part = [x for x in handles[i:i + chunk] if x]
        if part:
            send_batch(c, [request(k, "decref", field_fixed64(1, x)) for k, x in enumerate(part)])


# -- the attacks, one per finding of issue 9 ---------------------------------------------------


def attack_1(d, slots=4096, repeats=4096):
    """gc_get_referents with one handle repeated: a 32 KiB request listing an object of 4096
    slots 4096 times asks for 16.7M handles (134 MB)."""
    c = d.session()
    target = c.alloc(size=8)
    o = c.alloc(slots=slots)
    for i in range(0, slots, 20000):
        send_batch(c, [request(k, "set_slot", field_fixed64(1, o) + field_varint(2, k + i) +
                                field_fixed64(3, target))
                       for k in range(min(20000, slots - i))])
    body = field_bytes(1, struct.pack("<%dQ" % repeats, *([o] * repeats))) + field_varint(2, 1)
    with Measure(d) as m:
        rid = c.next_id
        c.next_id += 1
        c.send_raw(frame_of(request(rid, "gc_get_referents", body)))
        r = c.recv_response()
    # The same with distinct: one handle.
    rid = c.next_id
    c.next_id += 1
    c.send_raw(frame_of(request(rid, "gc_get_referents", body + field_varint(3, 1))))
    rd = c.recv_response()
    res = dict(m.figures(), status=r.status.name, distinct=len(rd.gc_get_referents.handles),
               distinct_status=rd.status.name, request_bytes=len(body),
               max_read_bytes=c.hello_result.limits.max_read_bytes)
    c.close()
    return res


def attack_2(d, pairs=2000, snapshots=3000, chunk=1000):
    """Trace snapshots without a count limit: with `pairs` distinct (site, tag) pairs live,
    each snapshot copies them all; batches of snapshots until one is refused."""
    c = d.session()
    c.ok("trace_start")
    handles, _ = allocs(c, [alloc_body(tag=b"T%d" % i) for i in range(pairs)])
    taken, refused = 0, None
    with Measure(d) as m:
        while taken < snapshots and not refused:
            r = send_batch(c, [request(k, "trace_snapshot") for k in range(chunk)])
            for res in r.batch.results:
                if res.status.code:
                    refused = res.status.name
                    break
                taken += 1
        ch = charged(c)
    res = dict(m.figures(), snapshots=taken, refused=refused, charged=ch)
    c.close()
    return res


def attack_3(d, weakrefs=300000, chunk=25000):
    """Weak references without a limit: weakref_new on one object until refused."""
    c = d.session()
    o = c.alloc(size=8)
    made, refused = 0, None
    body = field_fixed64(1, o) + field_varint(2, 1)
    with Measure(d) as m:
        while made < weakrefs and not refused:
            r = send_batch(c, [request(k, "weakref_new", body) for k in range(chunk)])
            for res in r.batch.results:
                if res.status.code:
                    refused = res.status.name
                    break
                made += 1
        ch = charged(c)
    res = dict(m.figures(), weakrefs=made, refused=refused, charged=ch)
    c.close()
    return res


def attack_4(d, conns, source="127.0.0.2", hold=3.0):
    """Slowloris before hello: `conns` connections from `source` each send a frame header
    announcing 4000 bytes, then one byte every 0.2 s; meanwhile a client from 127.0.0.1 says
    hello. Returns what that client got and how long the attackers' connections lasted."""
    socks, stop = [], threading.Event()
    host, port = d.tcp_addr
    for _ in range(conns):
        s = socket.socket()
        s.bind((source, 0))
        try:
            s.connect((host, port))
        except OSError:
            s.close()
            break
        s.setblocking(False)
        try:
            s.send(struct.pack(">I", 4000))
        except OSError:
            pass
        socks.append(s)
    alive = {"t0": time.monotonic(), "closed_at": []}

    def trickle():
        live = list(socks)
        while live and not stop.is_set():
            for s in list(live):
                try:
                    while s.recv(4096):  # the server's last word, if any, then EOF
                        pass
                    closed = True
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if not closed:
                    try:
                        s.send(b"\x0a")
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed = True
                if closed:
                    alive["closed_at"].append(time.monotonic() - alive["t0"])
                    live.remove(s)
            alive["live"] = len(live)
            stop.wait(0.2)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + hold
        got = None
        while time.monotonic() < deadline:
            c = h.Client(d.tcp_addr)
            try:
                got = c.hello().status.name
            except (h.Closed, OSError):
                got = "closed"
            c.close()
            if got == "OK":
                break
        while alive.get("live", 1) and time.monotonic() < deadline:
            stop.wait(0.1)  # how long the attackers last, when they are cut off
        return {"attackers": len(socks), "client": got,
                "attackers_closed": len(alive["closed_at"]),
                "last_closed_s": max(alive["closed_at"], default=None)}
    finally:
        stop.set()
        t.join()
        for s in socks:
            s.close()


def attack_5(d, classes=(16, 48, 112, 240, 496), keep_every=None, limit_bytes=None):
    """Fragmentation: for each size class, allocate until refused, then free all but one block
    per pool; the pools stay pinned while the live bytes fall, and the next class gets its own
    pools."""
    c = d.session()
    with Measure(d) as m:
        for size in classes:
            block = (24 + 8 + size + 15) // 16 * 16
            per_pool = 16384 // block
            bodies = [alloc_body(size=size)] * (limit_bytes // block + per_pool)
            handles, refused = allocs(c, bodies)
            live = [x for x in handles if x]
            decrefs(c, [x for i, x in enumerate(live) if i % per_pool])
        st = c.ok("heap_stats")
        charges = c.ok("heap_charges")
    res = dict(m.figures(), charged=charges.total, charged_objects=charges.objects,
               charged_buffers=charges.buffers, object_bytes=st.object_bytes,
               arena_bytes=st.arena_bytes, refused=refused)
    c.close()
    return res


def attack_7(d, n=200000, tag=b"x" * 200):
    """An event burst: a chain of n objects with finalizers and a 200-byte tag, all freed by
    one decref, while the client reads everything."""
    c = d.session()
    c.ok("set_events", mask=1 << pb.FINALIZED)
    handles, refused = allocs(c, [alloc_body(slots=1, tag=tag, flags=1)] * n)
    assert refused is None, refused
    for i in range(0, n - 1, 20000):
        send_batch(c, [request(k, "set_slot", field_fixed64(1, handles[j]) + field_varint(2, 0) +
                                field_fixed64(3, handles[j + 1]))
                       for k, j in enumerate(range(i, min(i + 20000, n - 1)))])
    decrefs(c, handles[1:])
    got, alive = 0, True
    with Measure(d) as m:
        rid = c.send("decref", handle=handles[0])
        try:
            c.sock.settimeout(30)
            resp = c.recv_response()
            assert resp.id == rid
            while got + len(c.events) < n:
                f = c.recv_frame()
                if f.WhichOneof("kind") == "event":
                    got += 1
            c.ok("ping")
        except (h.Closed, OSError):
            alive = False
    got += len(c.events)
    st = c.ok("heap_stats") if alive else None
    res = dict(m.figures(), events=got, expected=n, connection_alive=alive,
               dropped=st.events_dropped if st else None)
    c.close()
    return res


def attack_8_labels(d, n=65535, length=255):
    """Interned labels: n objects with distinct 255-byte tags and sites, then freed."""
    c = d.session()
    with Measure(d) as m:
        handles, refused = allocs(c, [alloc_body(tag=b"%05d" % i + b"t" * (length - 5),
                                                 site=b"%05d" % i + b"s" * (length - 5))
                                      for i in range(n)], chunk=5000)
        live = charged(c)
        decrefs(c, handles)
        after = charged(c)
    res = dict(m.figures(), charged_live=live, charged_after=after, refused=refused)
    c.close()
    return res


def attack_8_cursors(d, n=200000, cursors=16):
    """Cursors: n tracked objects, `cursors` gc_get_objects walks opened and left open."""
    c = d.session()
    handles, _ = allocs(c, [alloc_body(slots=1)] * n)
    with Measure(d) as m:
        base = charged(c)
        for _ in range(cursors):
            c.ok("gc_get_objects", cursor=0, max=1, borrow=True)
        ch = charged(c)
    res = dict(m.figures(), charged_before=base, charged=ch)
    c.close()
    return res


def attack_8_trace(d, pairs=200000):
    """The tracing table: `pairs` distinct (site, tag) pairs while tracing."""
    c = d.session()
    c.ok("trace_start")
    with Measure(d) as m:
        base = charged(c)
        allocs(c, [alloc_body(tag=b"%d" % (i % 60000), site=b"%d" % (i // 60000))
                   for i in range(pairs)])
        ch = charged(c)
    res = dict(m.figures(), charged_before=base, charged=ch)
    c.close()
    return res


def attack_9(d, n=65536):
    """Tag ids: n distinct tags, each on an object allocated and freed at once."""
    c = d.session()
    refused = None
    for i in range(0, n, 10000):
        reqs = []
        for k in range(i, min(i + 10000, n)):
            reqs.append(request(2 * k, "alloc", alloc_body(tag=b"tag%d" % k)))
        r = send_batch(c, reqs)
        hs = [x.alloc.handle for x in r.batch.results if x.status.code == 0]
        bad = [x.status for x in r.batch.results if x.status.code]
        if bad and not refused:
            refused = "%s: %s" % (bad[0].name, bad[0].message)
        decrefs(c, hs)
    r = c.call("alloc", tag="one more")
    res = {"after_distinct": n, "new_tag": r.status.name, "refused": refused}
    c.close()
    return res


def attack_10_nul(d):
    """A string with a NUL byte: a token (hello) and a tag."""
    out = {}
    c = d.connect()
    c.send_raw(frame_of(request(1, "hello", field_varint(1, 1) + field_bytes(3, b"adm1n\0junk"))))
    out["token"] = c.recv_response().status.name
    c.close()
    c = d.session()
    rid = c.next_id
    c.next_id += 1
    c.send_raw(frame_of(request(rid, "alloc", alloc_body(tag=b"Node\0junk"))))
    out["tag"] = c.recv_response().status.name
    c.close()
    return out


def attack_10_rejections(d, extra=100):
    """Connections over max_connections: every one should hear ETOOMANY; the log should say
    so in a few lines, not one per connection."""
    held = [d.session() for _ in range(d.config["max_connections"])]
    start = len(d.log())
    answers, extras = [], []
    for _ in range(extra):  # all at once: more than any queue of pending refusals
        try:
            extras.append(h.Client(d.tcp_addr))
        except OSError:
            answers.append("reset")
    for c in extras:  # the hellos only once all are connected
        try:
            c.send_request(h.make_request(1, "hello", protocol_version=1))
        except OSError:
            pass
    for c in extras:
        try:
            got = c.expect_closed(timeout=5)
            answers.append(got[0].status.name if got else "closed")
        except OSError:
            answers.append("reset")
        c.close()
    time.sleep(1.2)  # the rate-limited summary is due within a second
    lines = [l for l in d.log()[start:] if "reject" in l or "too many connections" in l]
    for c in held:
        c.close()
    return {"rejected": extra, "etoomany": answers.count("ETOOMANY"),
            "other": sorted(set(a for a in answers if a != "ETOOMANY")),
            "log_lines": len(lines)}


def attack_10_fallback(d, mib=200):
    """RSS after a peak: `mib` MiB of objects allocated, then the session ends."""
    c = d.session()
    before = rss(d.proc.pid)
    allocs(c, [alloc_body(size=4000)] * (mib * MIB // 4096), chunk=5000)
    top = rss(d.proc.pid)
    c.call("goodbye")
    c.close()
    d.wait_log("destroyed \\(goodbye\\)", start=0)
    # The server trims on its own time; ask for a little while.
    after = h.wait_until(lambda: rss(d.proc.pid) < before + 32 * MIB and rss(d.proc.pid), 5) \
        or rss(d.proc.pid)
    return {"rss_before": before, "rss_top": top, "rss_after": after}


def attack_10_max_memory(d, sessions=3, size=4000):
    """The server-wide cap: `sessions` sessions allocate until refused; then a new session, a
    read and a free in a full one, /readyz; then one session ends and a new one is served."""
    held = [d.session() for _ in range(sessions)]
    refusals, handles = [], []
    for c in held:
        hs, refused = allocs(c, [alloc_body(size=size)] * (64 * MIB // (size + 32)), chunk=2000)
        hs = [x for x in hs if x]
        handles.append(hs)
        r = c.call("alloc", size=size)
        refusals.append((refused, r.status.message))
    res = {"refusals": refusals, "charged": [charged(c) for c in held]}
    ch = held[0].ok("heap_charges")
    res["server_charged"], res["max_memory"] = ch.server_charged, ch.max_memory
    c = d.connect()
    r = c.hello()
    res["new_session"] = "%s: %s" % (r.status.name, r.status.message)
    c.close()
    k = max(i for i, hs in enumerate(handles) if hs)  # the last session that holds objects
    res["read_when_full"] = held[k].call("read", handle=handles[k][0], offset=0,
                                         length=8).status.name
    res["readyz_full"] = d.http_get("/readyz")[0] if d.http_addr else None
    res["free_when_full"] = held[k].call("decref", handle=handles[k][0]).status.name
    held[0].call("goodbye")
    held[0].close()
    d.wait_log("destroyed \\(goodbye\\)", start=0)
    # Its heap is freed on the thread pool (it is large): the server's charge falls once it is.
    h.wait_until(lambda: held[1].ok("heap_charges").server_charged <
                 res["server_charged"] - res["charged"][0] // 2, 20)
    res["readyz_after"] = d.http_get("/readyz")[0] if d.http_addr else None
    c = d.connect()
    res["new_session_after"] = c.hello().status.name
    res["alloc_after"] = c.call("alloc", size=size).status.name
    c.close()
    for c in held[1:]:
        c.close()
    return res


def fmt(v):
    if isinstance(v, int) and v > 10 * MIB:
        return "%.1f MiB" % (v / MIB)
    return str(v)


def main(argv):
    items = argv[1:] or ["1", "2", "3", "4", "5", "7", "8_labels", "8_cursors", "8_trace", "9",
                         "10_nul", "10_rejections", "10_fallback", "10_max_memory"]
    cfg = {"max_connections": 64, "admin_tokens": ["adm1n"], "log_level": "info"}
    for item in items:
        extra = {}
        if item == "5":
            extra = {"session_max_bytes": "4MiB"}
        if item == "7":
            extra = {"output_buffer_limit": "1MiB"}
        if item == "10_max_memory":
            extra = {"max_memory": "24MiB", "session_max_bytes": "16MiB", "http": ["127.0.0.1:0"]}
        with h.Daemon(dict(cfg, **extra)) as d:
            fn = globals()["attack_" + item]
            if item == "4":
                r = fn(d, conns=64)
            elif item == "5":
                r = fn(d, limit_bytes=4 * MIB)
            else:
                r = fn(d)
            print("item %-14s %s" % (item, ", ".join("%s=%s" % (k, fmt(v)) for k, v in r.items())))
            sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv)
