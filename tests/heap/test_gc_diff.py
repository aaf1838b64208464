#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""test_gc_diff.py: the collector and the order of events against CPython, program by program.

Generates random programs (allocate containers and atomic objects, with and without
finalizers; set slots; take and drop client references; make and free weak references; build
long chains with forks; collect a generation; freeze, unfreeze; DEBUG_SAVEALL on and off;
break and clear the garbage list), runs each in the engine through gc_diff_driver and in a
fresh /usr/bin/python3, and requires the same output from both, line by line: every
FINALIZED and WEAKREF_CLEARED event and every collection's start and stop in the order they
happen (``__del__``, weakref callbacks and gc.callbacks in CPython), get_count() before each
collect(), collect()'s return value with the counts of generations 1 and 2 after it, and at
the end the set of containers still alive.

The Python side models heapd's objects exactly:
- a container with k slots is an instance of a class with __slots__ ``_id, s0 .. s(k-1)`` and
  ``__weakref__`` (one gc-tracked object; slots are cleared in sorted name order, and _id,
  an int, sorts first and is harmless), with a ``__del__`` if it has a finalizer;
- an atomic object is an instance of a class with __slots__ ``_id, __weakref__``, untracked
  at once through PyObject_GC_UnTrack (heapd's atomic objects are never tracked);
- a weak reference is an instance of a ``weakref.ref`` subclass holding its number, with a
  callback if it notifies;
- the client's references are a count per object plus one strong reference in a list that
  the collector does not track (untracked through ctypes), so that they are roots that change
  no generation list, as heapd's client references are; gc.garbage is untracked too (heapd's
  garbage list is a root outside the generations);
- the harness's own gc allocations are kept out of count[0]: everything the harness needs is
  made before gc.freeze() (which zeroes the counts); what it must make during the program (a
  weak reference object, an atomic object, which heapd does not count) is balanced at once by
  freeing one of the dummy objects set aside for the purpose, and what it must free (a weak
  reference object, an atomic object: its __del__ runs just before its free) by allocating
  one first; temporaries live between a +1 and a -1 with no program allocation in between,
  which leaves the count as it would have been. CPython's free lists would break that (a
  tuple taken from one and given back changes no count, a fresh one given to one leaves +1,
  and a full collection empties them): the harness builds no lists or dicts during the
  program, and keeps four tuples of each size 1..19 on the tuple free lists, refilled after
  every full collection. After each collection count[0] is set back to 0 by freeing dummies
  (heapd's and CPython's are 0 there: nothing the program does allocates during a
  collection), which takes off the stop callback's info dict and the refills.

Each rule of docs/PROTOCOL.md "Event order" is exercised: a mutant engine with weak
references cleared oldest first, the garbage list cleared first to last, the LIFO cascade or
no trashcan fails on dozens of the default programs.

Incremental mode (--incremental): the same programs without freeze, unfreeze and debug flags
(whose effect depends on when garbage is found), run by the driver with an increment of
incremental collection after every operation, each of 1 to 64 objects of work (so that cycles
span many mutations: every barrier is exercised), against CPython's full collections: the
containers alive at the end, after the program's last complete collection, and the set of
FINALIZED events must be the same.

Odd seeds run the driver with --side always (every collection keeps gc_refs in the
collector's side table, gc.c; seeds 3 mod 4 with --side wide, its 32-bit table), even ones
with --side never: every path agrees with CPython.

Usage: test_gc_diff.py DRIVER [--seeds N] [--ops N] [--seed S] [--incremental]
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

# Runs one program under CPython; its output is the driver's, line for line.
RUNNER = r"""
import ctypes, gc, os, sys, weakref
gc.disable()
KMAX = int(sys.argv[1])
untrack = ctypes.pythonapi.PyObject_GC_UnTrack
untrack.argtypes = (ctypes.py_object,)
untrack.restype = None

out = []      # the output lines, events included as they happen
objs = []     # id -> the object while the client holds a reference, else None
held = []     # id -> client references
wrs = []      # weak id -> the weak reference object until freed
pool = []     # dummies: freeing one takes a harness allocation back off count[0]
scratch = [None] * 4

class Dummy:
    __slots__ = ()

def fin(self):
    out.append("F " + str(self._id))

def atom_del(self):
    pool.append(Dummy())  # the atom's own free, right after, takes this +1 off again

def atom_fin(self):
    out.append("F " + str(self._id))
    pool.append(Dummy())

def container_class(k, finalizer):
    ns = {"__slots__": ("_id",) + tuple("s%d" % i for i in range(k)) + ("__weakref__",)}
    if finalizer:
        ns["__del__"] = fin
    return type("C%d%s" % (k, "f" if finalizer else ""), (), ns)

classes = [[container_class(k, f) for f in (0, 1)] for k in range(KMAX + 1)]
atoms = [type("Atom", (), {"__slots__": ("_id", "__weakref__"), "__del__": atom_del}),
         type("AtomF", (), {"__slots__": ("_id", "__weakref__"), "__del__": atom_fin})]
ours = set(c for row in classes[1:] for c in row)

class WR(weakref.ref):
    __slots__ = ("wid",)

def notify(wr):
    out.append("W " + str(wr.wid))

def gc_callback(phase, info):
    if phase == "start":
        out.append("[ " + str(info["generation"]))
    else:
        out.append("] " + str(info["generation"]) + " " + str(info["collected"]) + " " +
                   str(info["uncollectable"]))

def prime():
    # Puts four tuples of each size 1..19 on CPython's tuple free lists, which a full
    # collection empties (clear_freelists): a tuple taken from a free list and given back
    # leaves count[0] alone, a fresh one given to the free list leaves it one higher. The
    # harness's tuples (call arguments, get_count) and PyObject_ClearWeakRefs' then come
    # from the lists.
    for k in range(1, 20):
        for i in range(4):
            scratch[i] = tuple(range(k))
        for i in range(4):
            scratch[i] = None

gc.callbacks.append(gc_callback)
names = ["s%d" % i for i in range(KMAX)]
prog = sys.stdin.read().split("\n")
ncollect = sum(1 for line in prog if line[:1] == "C")
pool.extend(Dummy() for _ in range(len(prog) + 100 * ncollect + 100))
for lst in (out, objs, held, wrs, pool, scratch, gc.garbage):
    untrack(lst)

def main(lines):
    for line in lines:
        if not line:
            continue
        op = line[0]
        if op == "A":
            objs.append(classes[int(line[2])][int(line[4])]())
            objs[-1]._id = len(objs) - 1
            held.append(1)
        elif op == "T":
            objs.append(atoms[int(line[2])]())
            untrack(objs[-1])
            pool.pop()
            objs[-1]._id = len(objs) - 1
            held.append(1)
        elif op == "S":
            p1 = line.find(" ", 2)
            p2 = line.find(" ", p1 + 1)
            t = int(line[p2 + 1:])
            setattr(objs[int(line[2:p1])], names[int(line[p1 + 1:p2])],
                    objs[t] if t >= 0 else None)
        elif op == "I":
            held[int(line[2:])] += 1
        elif op == "D":
            a = int(line[2:])
            held[a] -= 1
            if held[a] == 0:
                objs[a] = None
        elif op == "W":
            p1 = line.find(" ", 2)
            wrs.append(WR(objs[int(line[2:p1])], notify if line[p1 + 1:] == "1" else None))
            pool.pop()
            wrs[-1].wid = len(wrs) - 1
        elif op == "X":
            pool.append(Dummy())
            wrs[int(line[2:])] = None
        elif op == "C":
            out.append("count %d %d %d" % gc.get_count())
            g = int(line[2:])
            n = gc.collect(g)
            # A collection leaves count[0] at 0 (nothing the program does allocates during
            # one); whatever the harness left there (the stop callback's info dict and the
            # tuples fresh after a full collection emptied the free lists) goes.
            if g == 2:
                prime()
            p = gc.get_count()[0]
            while p > 0:
                pool.pop()
                p -= 1
            c = gc.get_count()
            out.append("found %d %d %d" % (n, c[1], c[2]))
            c = None
        elif op == "F":
            gc.freeze()
        elif op == "U":
            gc.unfreeze()
        elif op == "G":
            gc.set_debug(int(line[2:]))
        elif op == "R":
            garbage = gc.garbage
            i = 0
            while i < len(garbage):
                for name in names:
                    if type(getattr(garbage[i], name, None)) in ours:
                        setattr(garbage[i], name, None)
                i += 1
            garbage = None
        elif op == "K":
            gc.garbage.clear()

lines = iter(prog)
gc.collect()
prime()
gc.get_count()
gc.freeze()  # zeroes the counts
out.clear()  # the set-up collection's start and stop
main(lines)
gc.unfreeze()
out.append("live" + "".join(" %d" % i for i in sorted(o._id for o in gc.get_objects()
                                                      if type(o) in ours)))
sys.stdout.write("\n".join(out) + "\n")
sys.stdout.flush()
os._exit(0)  # no interpreter shutdown: its finalizers are not the program's
"""


def gen_program(seed, nops):
    """A random valid program: only objects the client holds are named."""
    rng = random.Random(seed)
    lines = []
    nslots = []        # id -> slots (0 = atomic)
    held = {}          # id -> client references (> 0)
    ids = []           # the keys of held, for random choice
    pos = {}           # id -> index in ids
    weaks = []         # live weak ids
    nweak = [0]        # weak references made so far (the next weak id)
    pfin = rng.choice((0.0, 0.3, 0.7, 1.0))   # share of objects with a finalizer
    pweak = rng.choice((0.0, 0.04, 0.1))      # share of steps that make a weak reference
    pchain = rng.choice((0.0, 0.0, 0.004))    # share of steps that build a long chain
    saveall = rng.random() < 0.25             # DEBUG_SAVEALL from the start, garbage cleared often
    pgarbage = 0.02 if saveall else 0.005     # share of steps that break (R) or clear (K) garbage
    if saveall:
        lines.append("G 32")

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

    def alloc(k, finalizer=None):
        f = rng.random() < pfin if finalizer is None else finalizer
        lines.append(("A %d %d" % (k, f)) if k else ("T %d" % f))
        nslots.append(k)
        hold(len(nslots) - 1)
        return len(nslots) - 1

    def chain():
        """c0 -> c1 -> ... (40 to 160 links), some links forking into a second child (a
        small container or an atomic object); only c0 keeps its client reference."""
        head = prev = alloc(rng.randint(2, KMAX))
        for _ in range(rng.randint(40, 160)):
            n = alloc(rng.randint(2, KMAX))
            lines.append("S %d 0 %d" % (prev, n))
            if rng.random() < 0.2:
                f = alloc(rng.choice((0, 1)))
                lines.append("S %d 1 %d" % (prev, f))
                if rng.random() < pweak * 5:
                    lines.append("W %d 1" % f)
                    weaks.append(nweak[0])
                    nweak[0] += 1
                lines.append("D %d" % f)
                release(f)
            if prev != head:
                lines.append("D %d" % prev)
                release(prev)
            prev = n
        if prev != head:
            lines.append("D %d" % prev)
            release(prev)

    def ring():
        """A ring of 2 to 5 containers, each also holding an atomic child (with a finalizer,
        perhaps a weak reference): garbage whose clearing shows its order."""
        members = [alloc(rng.randint(2, KMAX)) for _ in range(rng.randint(2, 5))]
        for j, m in enumerate(members):
            lines.append("S %d 0 %d" % (m, members[(j + 1) % len(members)]))
            kid = alloc(0, finalizer=True)
            lines.append("S %d 1 %d" % (m, kid))
            if rng.random() < 0.5:
                lines.append("W %d 1" % kid)
                weaks.append(nweak[0])
                nweak[0] += 1
            lines.append("D %d" % kid)
            release(kid)
        for m in members:
            lines.append("D %d" % m)
            release(m)

    for _ in range(nops):
        r = rng.random()
        if r < pchain:
            chain()
        elif r < pchain + pgarbage:
            ring()
        elif r < 0.20 or not ids:
            alloc(rng.randint(1, KMAX))
        elif r < 0.24:
            alloc(0)
        elif r < 0.60:
            # Mostly among recent objects, so that cycles form and generations mix.
            cs = [i for i in ids if nslots[i]]
            if not cs:
                continue
            a = rng.choice(cs[-12:] if rng.random() < 0.7 else cs)
            t = -1 if rng.random() < 0.08 else rng.choice(ids[-12:] if rng.random() < 0.7 else ids)
            lines.append("S %d %d %d" % (a, rng.randrange(nslots[a]), t))
        elif r < 0.63:
            a = rng.choice(ids)
            lines.append("I %d" % a)
            held[a] += 1
        elif r < 0.63 + pweak:
            # Several weak references per object: recent objects are chosen again and again.
            a = rng.choice(ids[-6:] if rng.random() < 0.7 else ids)
            lines.append("W %d %d" % (a, rng.random() < 0.8))
            weaks.append(nweak[0])
            nweak[0] += 1
        elif r < 0.64 + pweak:
            if weaks:
                w = weaks.pop(rng.randrange(len(weaks)))
                lines.append("X %d" % w)
        elif r < 0.90:
            a = rng.choice(ids)
            lines.append("D %d" % a)
            release(a)
        elif r < 0.97:
            lines.append("C %d" % rng.choice((0, 0, 0, 1, 1, 2)))
        elif r < 0.975:
            lines.append("F")
        elif r < 0.98:
            lines.append("U")
        elif r < 0.99 - 2 * pgarbage:
            lines.append("G %d" % rng.choice((0, 32)))
        elif r < 0.99 - pgarbage:
            lines.append("R")
        elif r < 0.99:
            if rng.random() < 0.8:
                lines.append("R")  # mostly break the entries apart first, so that they die
            lines.append("K")
        else:
            lines.append("C %d" % rng.choice((0, 1, 2)))
    # End with each generation collected once; half the programs then drop every client
    # reference, clear the garbage list and collect everything (then only frozen objects
    # survive).
    lines += ["C 0", "C 1", "C 2"]
    if saveall:
        lines += ["R", "K", "C 2"]
    if rng.random() < 0.5:
        for i in list(ids):
            for _ in range(held[i]):
                lines.append("D %d" % i)
        lines += ["G 0", "C 0", "R", "K", "C 2"]
    return "\n".join(lines) + "\n"


def run(argv, program):
    p = subprocess.run(argv, input=program, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError("%s exited with %d:\n%s" % (argv[0], p.returncode, p.stderr))
    return p.stdout.splitlines()


def timeless(program):
    """The program without the operations whose effect depends on when garbage is found."""
    return "".join(l + "\n" for l in program.splitlines() if l[:1] not in ("F", "U", "G"))


def check(driver, seed, nops, incremental=False):
    """None if the engine and CPython agree on this program, else a report."""
    program = gen_program(seed, nops)
    # Odd seeds collect through the side table (gc.c; its 32-bit form for seeds 3 mod 4), even
    # ones through the objects: every path must give CPython's results.
    argv = [driver, "--side", ("never", "always", "never", "wide")[seed % 4]]
    if incremental:
        program = timeless(program)
        argv += ["--incremental", str(random.Random(seed).choice((1, 2, 5, 16, 64)))]
    try:
        ours = run(argv, program)
        theirs = run([PYTHON, "-I", "-S", "-c", RUNNER, str(KMAX)], program)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return save(seed, nops, program, str(e))
    if incremental:
        fin = lambda out: sorted(l for l in out if l.startswith("F "))
        if ours[-1:] == theirs[-1:] and fin(ours) == fin(theirs):
            return None
        if fin(ours) != fin(theirs):
            return save(seed, nops, program, "incremental (%s): FINALIZED sets differ: engine "
                        "%s, CPython %s" % (argv[-1], fin(ours)[:20], fin(theirs)[:20]))
        return save(seed, nops, program, "incremental (%s): the survivors differ:\n  engine:  "
                    "%s\n  CPython: %s" % (argv[-1], ours[-1][:300], theirs[-1][:300]))
    if ours == theirs:
        return None
    prog_lines = program.splitlines()
    collects = [n for n, l in enumerate(prog_lines, 1) if l.startswith("C")]
    for k, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            ncollects = sum(1 for l in ours[:k] if l.startswith("found"))
            if ncollects < len(collects):
                where = "output line %d, before collect #%d (program line %d)" % (
                    k + 1, ncollects + 1, collects[ncollects])
            else:
                where = "output line %d, after the last collect" % (k + 1)
            context = "\n".join("    %s | %s" % (x, y) for x, y in
                                 zip(ours[max(0, k - 4):k], theirs[max(0, k - 4):k]))
            return save(seed, nops, program, "first divergence at %s:\n%s\n  engine:  %s\n"
                        "  CPython: %s" % (where, context, a[:300], b[:300]))
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
    ap.add_argument("--incremental", action="store_true",
                    help="the engine collects incrementally; compare the survivors")
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
        for report in pool.map(lambda j: check(args.driver, *j, args.incremental), jobs):
            if report:
                failures.append(report)
    if failures:
        print("gc_diff: %d of %d programs diverge from CPython" % (len(failures), len(jobs)))
        for r in failures[:5]:
            print("FAIL " + r)
        sys.stdout.flush()
        sys.exit(1)
    print("gc_diff: %d programs%s, the engine agrees with %s" % (
        len(jobs), " (incremental)" if args.incremental else "", PYTHON))


if __name__ == "__main__":
    main()
