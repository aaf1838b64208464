#!/usr/bin/python3
"""test_gc_diff.py: the collector against CPython, program by program.

Generates random programs (allocate containers and atomic objects, set slots, take and drop
client references, collect a generation, freeze, unfreeze), runs each in the engine through
gc_diff_driver and in a fresh /usr/bin/python3, and requires the same output from both: every
collect()'s return value with the counts of generations 1 and 2 after it, and at the end the
set of containers still alive.

On the Python side a container with k slots is an instance of a class with __slots__ of k
names plus __weakref__ (one gc-tracked object, no __dict__), an atomic object is a bytes
object (not tracked), and the client's references are a count per object plus one strong
reference held while the count is positive. The interpreter's own objects are collected and
frozen first, so collections see only the program's objects; survival is read through weak
references.

Usage: test_gc_diff.py DRIVER [--seeds N] [--ops N] [--seed S]
Only the standard library of /usr/bin/python3 is used. On a divergence the test fails with
the seed, the first differing line and the program saved to a file for replay.
"""
import argparse
import concurrent.futures
import os
import random
import subprocess
import sys
import tempfile

PYTHON = "/usr/bin/python3"
KMAX = 4  # slots per container: 1..KMAX

# Runs one program under CPython. Everything it needs is created before gc.freeze(), so the
# only objects collections see are the program's containers and the harness's weakrefs
# (which stay reachable and so never change a count).
RUNNER = r"""
import gc, sys, weakref
gc.disable()
KMAX = int(sys.argv[1])
classes = [None] + [
    type("C%d" % k, (), {"__slots__": tuple("s%d" % i for i in range(k)) + ("__weakref__",)})
    for k in range(1, KMAX + 1)
]
names = ["s%d" % i for i in range(KMAX)]
prog = sys.stdin.read().split("\n")
objs = []    # id -> the object while the client holds a reference, else None
held = []    # id -> client references
weak = {}    # container id -> weak reference
out = []
mkweak = weakref.ref
gc.collect()
gc.freeze()
for line in prog:
    if not line:
        continue
    op = line[0]
    if op == "A":
        o = classes[int(line[2:])]()
        weak[len(objs)] = mkweak(o)
        objs.append(o)
        held.append(1)
        o = None
    elif op == "T":
        objs.append(bytes(8))
        held.append(1)
    elif op == "S":
        a, i, t = line[2:].split(" ")
        t = int(t)
        setattr(objs[int(a)], names[int(i)], objs[t] if t >= 0 else None)
    elif op == "I":
        held[int(line[2:])] += 1
    elif op == "D":
        a = int(line[2:])
        held[a] -= 1
        if held[a] == 0:
            objs[a] = None
    elif op == "C":
        n = gc.collect(int(line[2:]))
        c = gc.get_count()
        out.append("%d %d %d" % (n, c[1], c[2]))
    elif op == "F":
        gc.freeze()
    elif op == "U":
        gc.unfreeze()
out.append("live" + "".join(" %d" % i for i in sorted(weak) if weak[i]() is not None))
sys.stdout.write("\n".join(out) + "\n")
"""


def gen_program(seed, nops):
    """A random valid program: only objects the client holds are named."""
    rng = random.Random(seed)
    lines = []
    nslots = []        # id -> slots (0 = atomic)
    held = {}          # id -> client references (> 0)
    ids = []           # the keys of held, for random choice
    pos = {}           # id -> index in ids

    def hold(i):
        pos[i] = len(ids)
        ids.append(i)
        held[i] = 1

    def release(i):
        held[i] -= 1
        if held[i] == 0:
            del held[i]
            j = pos.pop(i)
            last = ids.pop()
            if last != i:
                ids[j] = last
                pos[last] = j

    for _ in range(nops):
        r = rng.random()
        if r < 0.20 or not ids:
            k = rng.randint(1, KMAX)
            lines.append("A %d" % k)
            nslots.append(k)
            hold(len(nslots) - 1)
        elif r < 0.24:
            lines.append("T")
            nslots.append(0)
            hold(len(nslots) - 1)
        elif r < 0.64:
            # Mostly among recent objects, so that cycles form and generations mix.
            cs = [i for i in ids if nslots[i]]
            if not cs:
                continue
            a = rng.choice(cs[-12:] if rng.random() < 0.7 else cs)
            t = -1 if rng.random() < 0.08 else rng.choice(ids[-12:] if rng.random() < 0.7 else ids)
            lines.append("S %d %d %d" % (a, rng.randrange(nslots[a]), t))
        elif r < 0.67:
            a = rng.choice(ids)
            lines.append("I %d" % a)
            held[a] += 1
        elif r < 0.93:
            a = rng.choice(ids)
            lines.append("D %d" % a)
            release(a)
        elif r < 0.99:
            lines.append("C %d" % rng.choice((0, 0, 0, 1, 1, 2)))
        elif r < 0.995:
            lines.append("F")
        else:
            lines.append("U")
    # End with each generation collected once; half the programs then drop every client
    # reference and collect everything (then only frozen objects survive).
    lines += ["C 0", "C 1", "C 2"]
    if rng.random() < 0.5:
        for i in list(ids):
            for _ in range(held[i]):
                lines.append("D %d" % i)
        lines += ["C 0", "C 2"]
    return "\n".join(lines) + "\n"


def run(argv, program):
    p = subprocess.run(argv, input=program, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError("%s exited with %d:\n%s" % (argv[0], p.returncode, p.stderr))
    return p.stdout.splitlines()


def check(driver, seed, nops):
    """None if the engine and CPython agree on this program, else a report."""
    program = gen_program(seed, nops)
    try:
        ours = run([driver], program)
        theirs = run([PYTHON, "-I", "-S", "-c", RUNNER, str(KMAX)], program)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return save(seed, nops, program, str(e))
    if ours == theirs:
        return None
    prog_lines = program.splitlines()
    collects = [n for n, l in enumerate(prog_lines, 1) if l.startswith("C")]
    for k, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            if k < len(collects):
                where = "after collect #%d (program line %d: %r)" % (
                    k + 1, collects[k], prog_lines[collects[k] - 1])
            else:
                where = "in the final survivor list"
            return save(seed, nops, program, "first divergence %s:\n  engine:  %s\n  CPython: %s"
                        % (where, a[:300], b[:300]))
    return save(seed, nops, program, "output lengths differ: engine %d lines, CPython %d lines"
                % (len(ours), len(theirs)))


def save(seed, nops, program, why):
    fd, path = tempfile.mkstemp(prefix="gc_diff_seed%d_" % seed, suffix=".prog")
    with os.fdopen(fd, "w") as f:
        f.write(program)
    return ("seed %d (%d ops): %s\n  program saved to %s\n  replay: test_gc_diff.py DRIVER"
            " --seed %d --ops %d, or DRIVER < %s" % (seed, nops, why, path, seed, nops, path))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("driver")
    ap.add_argument("--seeds", type=int, default=400, help="small programs")
    ap.add_argument("--ops", type=int, default=300, help="operations per small program")
    ap.add_argument("--seed", type=int, help="run only this seed")
    args = ap.parse_args()
    if not os.access(args.driver, os.X_OK):
        sys.exit("test_gc_diff.py: driver %r is not executable" % args.driver)

    if args.seed is not None:
        jobs = [(args.seed, args.ops)]
    else:
        # Several hundred small programs and a few big ones (deep generations, many cycles).
        jobs = [(s, args.ops) for s in range(1, args.seeds + 1)]
        jobs += [(100000 + s, 20000) for s in range(4)]
    failures = []
    workers = max(2, os.cpu_count() or 2)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for report in pool.map(lambda j: check(args.driver, *j), jobs):
            if report:
                failures.append(report)
    if failures:
        print("gc_diff: %d of %d programs diverge from CPython" % (len(failures), len(jobs)))
        for r in failures[:5]:
            print("FAIL " + r)
        sys.stdout.flush()
        sys.exit(1)
    print("gc_diff: %d programs, the engine agrees with %s" % (len(jobs), PYTHON))


if __name__ == "__main__":
    main()
