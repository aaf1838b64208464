#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Benchmark: the heapd Python client beside redis-py, side by side in one run.

Starts heapd (its default config, but on a free loopback TCP port) and a redis-server
(no persistence, on another free loopback port), then measures, for each client, the same
four modes, in alternating rounds so that the machine's noise falls on all of them alike:

    ping            one call at a time: s.ping() / r.ping()
    alloc+release   one call at a time: s.alloc(size=16) then ref.release() /
                    r.set(key, 16 bytes) then r.delete(key); both calls counted
    pipeline 100    with s.pipeline(): 100 alloc(size=16), then a pipeline of their 100
                    releases / r.pipeline(transaction=False): 100 SET, then 100 DEL
    pipeline 1000   the same, 1000 deep

Clients: heapd with its C codec and with its pure-Python one (``heapd.implementation``),
and redis-py (Debian's python3-redis) with its hiredis parser when python3-hiredis is
installed and with its pure-Python parser.  Each client runs in a worker process of its
own, connected once; the parent asks each worker in turn to run one mode and collects
calls per second.  The table gives the median over the rounds and heapd's ratio to the
faster redis-py.

    bench/python_client_bench.py [--build build] [--rounds 5] [--seconds 0.5]

Figures are wall-clock and the machine is shared: read the ratios, which hold from run to
run, more than the absolute rates (docs/PERFORMANCE.md).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MODES = ["ping", "alloc+release", "pipeline 100", "pipeline 1000"]
VALUE = b"x" * 16


# -------------------------------------------------------------------------------------------
# Workers: one client each, driven over stdin/stdout with one JSON line per request.
# -------------------------------------------------------------------------------------------


def heapd_worker(url):
    import heapd
    s = heapd.connect(url)

    def ping(n):
        for _ in range(n):
            s.ping()
        return n

    def alloc_release(n):
        for _ in range(n // 2):
            s.alloc(size=16).release()
        return n // 2 * 2

    def pipelined(depth):
        def run(n):
            done = 0
            while done < n:
                with s.pipeline() as p:
                    for _ in range(depth):
                        p.alloc(size=16)
                refs = p.results
                with s.pipeline() as p:
                    for r in refs:
                        p.release(r)
                done += 2 * depth
            return done
        return run

    return f"heapd {heapd.__version__}, implementation {heapd.implementation!r}", {"ping": ping, "alloc+release": alloc_release,
                                  "pipeline 100": pipelined(100),
                                  "pipeline 1000": pipelined(1000)}


def redis_worker(port, parser):
    import redis
    import redis.connection
    kwargs = {}
    if parser == "python":
        kwargs["parser_class"] = redis.connection.PythonParser
    r = redis.Redis(connection_pool=redis.ConnectionPool(host="127.0.0.1", port=port,
                                                         **kwargs))
    r.ping()
    keys = [f"key:{i}" for i in range(1000)]

    def ping(n):
        for _ in range(n):
            r.ping()
        return n

    def set_del(n):
        for _ in range(n // 2):
            r.set("key", VALUE)
            r.delete("key")
        return n // 2 * 2

    def pipelined(depth):
        ks = keys[:depth]

        def run(n):
            done = 0
            while done < n:
                p = r.pipeline(transaction=False)
                for k in ks:
                    p.set(k, VALUE)
                p.execute()
                p = r.pipeline(transaction=False)
                for k in ks:
                    p.delete(k)
                p.execute()
                done += 2 * depth
            return done
        return run

    conn = r.connection_pool.get_connection("PING")
    name = f"redis-py {redis.__version__}, {type(conn._parser).__name__}"
    r.connection_pool.release(conn)
    return name, {"ping": ping, "alloc+release": set_del, "pipeline 100": pipelined(100),
                  "pipeline 1000": pipelined(1000)}


def worker_main(kind, target):
    if kind == "heapd":
        label, modes = heapd_worker(target)
    else:
        label, modes = redis_worker(int(target), kind.split(":")[1])
    print(json.dumps({"ready": label}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        fn = modes[req["mode"]]
        fn(min(req["n"], 2000))  # warm up
        n = req["n"]
        c0 = time.process_time()
        t0 = time.perf_counter()
        done = fn(n)
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
        print(json.dumps({"rate": done / dt, "cpu_us": cpu / done * 1e6}), flush=True)


# -------------------------------------------------------------------------------------------
# Servers.
# -------------------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port, proc, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port}")


def start_heapd(binary, tmp):
    cfg = os.path.join(tmp, "heapd.yaml")
    log = os.path.join(tmp, "heapd.log")
    with open(cfg, "w") as f:
        f.write('listen: ["127.0.0.1:0"]\nunix_socket: ""\nhttp: []\nlog_level: info\n')
    proc = subprocess.Popen([binary, "--config", cfg], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"heapd exited with {proc.returncode}: {open(log).read()}")
        with open(log) as f:
            m = re.search(r"listening on tcp 127\.0\.0\.1:(\d+)", f.read())
        if m:
            port = int(m.group(1))
            wait_tcp(port, proc, "heapd")
            return proc, port
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("heapd did not start")


def start_redis(binary):
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no", "--loglevel",
                             "warning"], stdout=subprocess.DEVNULL)
    wait_tcp(port, proc, "redis-server")
    return proc, port


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -------------------------------------------------------------------------------------------
# The run.
# -------------------------------------------------------------------------------------------


class Worker:
    def __init__(self, name, kind, target, env):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker",
                                      kind, str(target)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True)
        self.label = json.loads(self.proc.stdout.readline())["ready"]

    def run(self, mode, n):
        self.proc.stdin.write(json.dumps({"mode": mode, "n": n}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died")
        reply = json.loads(line)
        return reply["rate"], reply["cpu_us"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.5,
                    help="target length of one measurement")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(*args.worker)

    tmp = tempfile.mkdtemp(prefix="heapd-pybench-")
    heapd_proc, heapd_port = start_heapd(os.path.join(args.build, "bin", "heapd"), tmp)
    redis_proc, redis_port = start_redis(args.redis_server)
    workers = []
    try:
        env = dict(os.environ, PYTHONPATH=os.path.join(args.build, "clients", "python"))
        url = f"tcp://127.0.0.1:{heapd_port}"
        workers.append(Worker("heapd C", "heapd", url,
                              dict(env, HEAPD_PYTHON_IMPLEMENTATION="c")))
        workers.append(Worker("heapd Python", "heapd", url,
                              dict(env, HEAPD_PYTHON_IMPLEMENTATION="python")))
        try:
            import hiredis  # noqa: F401
            workers.append(Worker("redis-py hiredis", "redis:hiredis", redis_port, env))
        except ImportError:
            pass
        workers.append(Worker("redis-py Python", "redis:python", redis_port, env))
        # Size each measurement from a first quick probe, per client and mode.
        sizes = {}
        for mode in MODES:
            for w in workers:
                rate, _ = w.run(mode, 2000)
                sizes[w.name, mode] = max(2000, int(rate * args.seconds) // 2000 * 2000)
        rates = {key: [] for key in sizes}
        cpus = {key: [] for key in sizes}
        for rnd in range(args.rounds):
            order = workers if rnd % 2 == 0 else list(reversed(workers))
            for mode in MODES:
                for w in order:
                    rate, cpu = w.run(mode, sizes[w.name, mode])
                    rates[w.name, mode].append(rate)
                    cpus[w.name, mode].append(cpu)
        print_table(workers, rates, cpus, args)
    finally:
        for w in workers:
            w.close()
        stop(heapd_proc)
        stop(redis_proc)
        shutil.rmtree(tmp, ignore_errors=True)


def print_table(workers, rates, cpus, args):
    names = [w.name for w in workers]
    redis_names = [n for n in names if n.startswith("redis")]
    load = os.getloadavg()[0]
    print(f"python_client_bench: {args.rounds} rounds, medians, loopback TCP, load {load:.2f} "
          f"at the end")
    for w in workers:
        print(f"  {w.name}: {w.label}")
    print("\ncalls per second (wall clock):\n")
    head = ["mode"] + names + ["heapd C / best redis-py", "heapd Python / best redis-py"]
    print("| " + " | ".join(head) + " |")
    print("|" + " ---: |" * len(head))
    for mode in MODES:
        med = {n: statistics.median(rates[n, mode]) for n in names}
        best = max(med[n] for n in redis_names)
        cells = [mode] + [f"{med[n]:,.0f}" for n in names]
        cells += [f"{med['heapd C'] / best:.2f}", f"{med['heapd Python'] / best:.2f}"]
        print("| " + " | ".join(cells) + " |")
    print("\nclient CPU per call, microseconds (user + system, the client process only):\n")
    head = ["mode"] + names
    print("| " + " | ".join(head) + " |")
    print("|" + " ---: |" * len(head))
    for mode in MODES:
        cells = [mode] + [f"{statistics.median(cpus[n, mode]):.2f}" for n in names]
        print("| " + " | ".join(cells) + " |")
    spread = {n: max(max(rates[n, m]) / min(rates[n, m]) for m in MODES) for n in names}
    print("\nlargest max/min of a rate over the rounds: " +
          ", ".join(f"{n} {v:.2f}" for n, v in spread.items()))


if __name__ == "__main__":
    sys.exit(main())
