#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The examples of the stdlib's gc, weakref and tracemalloc documentation, run on a heapd
session (Python 3.11's docs, Doc/library/{gc,weakref,tracemalloc}.rst).

Each example is the documentation's text, adapted only by the session prefix: the module
is the session's (``weakref`` is ``s.weakref``, ``gc`` is ``s.gc``, ``tracemalloc`` is
``s.tracemalloc``), and an object of the example's class is a heap object of that tag
(``Object()`` is ``s.alloc(tag="Object")``).  Where heapd cannot say the same thing, the one
other rewrite is named where it is made:

* ``a is b`` between two objects is ``a == b`` between their Refs: two Ref objects can name
  one object (the ``is`` of the heap is the equality of Refs).
* An object's repr is a Ref's (``<heapd.Ref 0x...>``), not ``<__main__.Object object ...>``.

The weakref examples are doctests and must print exactly what the documentation prints.
The tracemalloc examples print figures of the program they run: each is run on the heap
with a known workload, and its output is checked line by line against the stdlib's format
and the workload's counts; the same example run by this interpreter on its own tracemalloc
gives output of the same shape, which is checked too.  The gc examples' values are those
of the documentation, except the two ``dict`` lines: CPython untracks a dict of atomic
values (an optimisation of its dict type), which a heap object with slots never is.

Run (ctest does, through heapd_daemon_test): HEAPD_BIN=<build>/bin/heapd
    PYTHONPATH=tests/server:<build>/clients/python /usr/bin/python3 test_python_stdlib_docs.py
"""

import contextlib
import doctest
import io
import linecache
import os
import re
import sys
import textwrap
import tracemalloc as std_tracemalloc
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import heapd  # noqa: E402
from test_python_client import USER_TOKEN, Daemon  # noqa: E402

DAEMON = None


def setUpModule():
    global DAEMON
    DAEMON = Daemon().start()


def tearDownModule():
    if DAEMON is not None:
        DAEMON.stop()


class DocsCase(unittest.TestCase):
    def setUp(self):
        self.s = heapd.connect(DAEMON.url, token=USER_TOKEN, timeout=30)
        self.addCleanup(self.s.close)

    def run_doctest(self, name, text, globs):
        """Runs ``text`` (a doctest, as the documentation shows it) with ``globs``; fails
        with doctest's report on the first difference."""
        parser = doctest.DocTestParser()
        test = parser.get_doctest(text, globs, name, name, 0)
        out = io.StringIO()
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        runner.run(test, out=out.write)
        self.assertEqual(runner.failures, 0, out.getvalue())
        self.assertGreater(runner.tries, 0)


# ---------------------------------------------------------------------------------------
# weakref: "Example", "Finalizer Objects", "Weak Reference Objects".
# ---------------------------------------------------------------------------------------


class WeakrefDocsTest(DocsCase):
    def globs(self):
        s = self.s
        # `import weakref` and `class Object: pass`, adapted by the session prefix.
        return {"s": s, "weakref": s.weakref,
                "Object": lambda: s.alloc(tag="Object")}

    def test_example(self):
        # Doc/library/weakref.rst, "Example" (``o is o2`` becomes ``o == o2``).
        self.run_doctest("weakref example", """
>>> o = Object()
>>> r = weakref.ref(o)
>>> o2 = r()
>>> o == o2
True
>>> del o, o2
>>> print(r())
None
""", self.globs())

    def test_finalizer_objects(self):
        # "Finalizer Objects": the finalizer runs at the del, as in CPython.
        self.run_doctest("weakref finalize", """
>>> kenny = Object()
>>> weakref.finalize(kenny, print, "You killed Kenny!")  #doctest:+ELLIPSIS
<finalize object at ...; for 'Object' at ...>
>>> del kenny
You killed Kenny!
""", self.globs())

    def test_finalizer_call_and_alive(self):
        self.run_doctest("weakref finalize call", """
>>> def callback(x, y, z):
...     print("CALLBACK")
...     return x + y + z
...
>>> obj = Object()
>>> f = weakref.finalize(obj, callback, 1, 2, z=3)
>>> assert f.alive
>>> assert f() == 6
CALLBACK
>>> assert not f.alive
>>> f()                     # callback not called because finalizer dead
>>> del obj                 # callback not called because finalizer dead
""", self.globs())

    def test_finalizer_detach(self):
        # (The object's repr is a Ref's, and ``newobj is obj`` becomes ``newobj == obj``.)
        self.run_doctest("weakref finalize detach", """
>>> def callback(x, y, z):
...     print("CALLBACK")
...     return x + y + z
...
>>> obj = Object()
>>> f = weakref.finalize(obj, callback, 1, 2, z=6)
>>> f.detach()                                           #doctest:+ELLIPSIS
(<heapd.Ref ...>, <function callback ...>, (1, 2), {'z': 6})
>>> newobj, func, args, kwargs = _
>>> assert not f.alive
>>> assert newobj == obj
>>> assert func(*args, **kwargs) == 9
CALLBACK
""", self.globs())

    def test_finalizer_at_exit(self):
        # "a finalizer will be called when the program exits if it is still alive": here,
        # when the session says goodbye (``exit()`` in the documentation).
        s = heapd.connect(DAEMON.url, token=USER_TOKEN)
        globs = {"weakref": s.weakref, "Object": lambda: s.alloc(tag="Object"),
                 "exit": s.close}
        self.run_doctest("weakref finalize atexit", """
>>> obj = Object()
>>> weakref.finalize(obj, print, "obj dead or exiting")  #doctest:+ELLIPSIS
<finalize object at ...; for 'Object' at ...>
>>> exit()
obj dead or exiting
""", globs)
        # And f.atexit = False keeps it from running then.
        s = heapd.connect(DAEMON.url, token=USER_TOKEN)
        obj = s.alloc()
        seen = []
        f = s.weakref.finalize(obj, seen.append, "ran")
        f.atexit = False
        s.close()
        self.assertEqual(seen, [])

    def test_extended_ref(self):
        # "Weak Reference Objects": subclassing ref, as the documentation does it.
        weakref = self.s.weakref
        globs = {"weakref": weakref}
        exec(textwrap.dedent('''
            class ExtendedRef(weakref.ref):
                def __init__(self, ob, callback=None, /, **annotations):
                    super().__init__(ob, callback)
                    self.__counter = 0
                    for k, v in annotations.items():
                        setattr(self, k, v)

                def __call__(self):
                    """Return a pair containing the referent and the number of
                    times the reference has been called.
                    """
                    ob = super().__call__()
                    if ob is not None:
                        self.__counter += 1
                        ob = (ob, self.__counter)
                    return ob
            '''), globs)
        o = self.s.alloc(tag="Object")
        r = globs["ExtendedRef"](o, note="annotated")
        self.assertEqual(r.note, "annotated")
        self.assertEqual(r(), (o, 1))
        self.assertEqual(r(), (o, 2))
        del o
        self.assertIsNone(r())

    def test_id2obj(self):
        # "Example": the WeakValueDictionary of objects by id.
        globs = {"weakref": self.s.weakref}
        exec(textwrap.dedent('''
            _id2obj_dict = weakref.WeakValueDictionary()

            def remember(obj):
                oid = id(obj)
                _id2obj_dict[oid] = obj
                return oid

            def id2obj(oid):
                return _id2obj_dict[oid]
            '''), globs)
        obj = self.s.alloc(tag="Object")
        oid = globs["remember"](obj)
        self.assertEqual(globs["id2obj"](oid), obj)
        del obj
        self.s.flush()
        with self.assertRaises(KeyError):
            globs["id2obj"](oid)


# ---------------------------------------------------------------------------------------
# gc: is_tracked.
# ---------------------------------------------------------------------------------------


class GcDocsTest(DocsCase):
    def test_is_tracked(self):
        # Doc/library/gc.rst, gc.is_tracked: atoms are not tracked, containers are.  The
        # objects, heap objects of the same kind: 0 and "a" are atomic (no slots), [] is a
        # container (slots).
        s = self.s
        globs = {"gc": s.gc, "int0": s.alloc(tag="int"), "str_a": s.alloc(data=b"a", tag="str"),
                 "empty_list": s.alloc(slots=1, tag="list"),
                 "list_of_list": s.alloc(slots=1, tag="dict")}
        globs["list_of_list"][0] = globs["empty_list"]
        self.run_doctest("gc.is_tracked", """
>>> gc.is_tracked(int0)
False
>>> gc.is_tracked(str_a)
False
>>> gc.is_tracked(empty_list)
True
>>> gc.is_tracked(list_of_list)
True
""", globs)

    def test_callbacks_info(self):
        # gc.callbacks: "info is a dict providing more information for the callback. The
        # following keys are currently defined: generation, collected, uncollectable."
        s = self.s
        seen = []
        s.gc.callbacks.append(lambda phase, info: seen.append((phase, set(info))))
        s.gc.collect()
        keys = {"generation", "collected", "uncollectable"}
        self.assertEqual(seen, [("start", keys), ("stop", keys | {"duration"})])


# ---------------------------------------------------------------------------------------
# tracemalloc: the five examples of "Examples".
# ---------------------------------------------------------------------------------------


STAT_RX = re.compile(r"^(?P<where>.+):(?P<line>\d+): size=(?P<size>[\d.]+ (B|KiB|MiB)), "
                     r"count=(?P<count>\d+), average=[\d.]+ (B|KiB)$")
DIFF_RX = re.compile(r"^(?P<where>.+):(?P<line>\d+): size=[\d.]+ (B|KiB|MiB) "
                     r"\(\+[\d.]+ (B|KiB|MiB)\), count=(?P<count>\d+) \(\+(?P<plus>\d+)\), "
                     r"average=[\d.]+ (B|KiB)$")


def run_printing(fn):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fn()
    return out.getvalue().splitlines()


class TracemallocDocsTest(DocsCase):
    def workload(self, n=1000):
        """The application: n objects of 100 bytes at one line (returned with them)."""
        s = self.s
        line = sys._getframe().f_lineno + 1
        objs = [s.alloc(size=100, tag="bytes") for _ in range(n)]
        return objs, line

    def py_workload(self, n=1000):
        line = sys._getframe().f_lineno + 1
        objs = [bytearray(100) for _ in range(n)]
        return objs, line

    def test_display_the_top_10(self):
        def example(tracemalloc, workload):
            tracemalloc.start()

            # ... run your application ...
            app = workload()

            snapshot = tracemalloc.take_snapshot()
            top_stats = snapshot.statistics('lineno')

            print("[ Top 10 ]")
            for stat in top_stats[:10]:
                print(stat)
            tracemalloc.stop()
            return app

        for tm, workload in ((self.s.tracemalloc, self.workload),
                             (std_tracemalloc, self.py_workload)):
            holder = {}
            lines = run_printing(lambda: holder.update(r=example(tm, workload)))
            _objs, line = holder["r"]
            self.assertEqual(lines[0], "[ Top 10 ]")
            self.assertLessEqual(len(lines), 11)
            stats = [STAT_RX.match(x) for x in lines[1:]]
            self.assertTrue(all(stats), lines)
            mine = [m for m in stats if m["where"] == __file__ and int(m["line"]) == line]
            self.assertEqual(len(mine), 1, lines)
            self.assertGreaterEqual(int(mine[0]["count"]), 1000)

    def test_compute_differences(self):
        def example(tracemalloc, workload):
            tracemalloc.start()
            # ... start your application ...

            snapshot1 = tracemalloc.take_snapshot()
            # ... call the function leaking memory ...
            leak = workload()
            snapshot2 = tracemalloc.take_snapshot()

            top_stats = snapshot2.compare_to(snapshot1, 'lineno')

            print("[ Top 10 differences ]")
            for stat in top_stats[:10]:
                print(stat)
            tracemalloc.stop()
            return leak

        for tm, workload in ((self.s.tracemalloc, self.workload),
                             (std_tracemalloc, self.py_workload)):
            holder = {}
            lines = run_printing(lambda: holder.update(r=example(tm, workload)))
            _objs, line = holder["r"]
            self.assertEqual(lines[0], "[ Top 10 differences ]")
            first = DIFF_RX.match(lines[1])
            self.assertTrue(first, lines)
            self.assertEqual((first["where"], int(first["line"])), (__file__, line), lines)
            self.assertGreaterEqual(int(first["plus"]), 1000)

    def test_get_the_traceback_of_a_memory_block(self):
        def example(tracemalloc, workload):
            # Store 25 frames
            tracemalloc.start(25)

            # ... run your application ...
            app = level1(workload)

            snapshot = tracemalloc.take_snapshot()
            top_stats = snapshot.statistics('traceback')

            # pick the biggest memory block
            stat = top_stats[0]
            print("%s memory blocks: %.1f KiB" % (stat.count, stat.size / 1024))
            for line in stat.traceback.format():
                print(line)
            tracemalloc.stop()
            return app

        def level1(workload):
            return level2(workload)

        def level2(workload):
            return workload(5000)

        lines = run_printing(lambda: example(self.s.tracemalloc, self.workload))
        self.assertRegex(lines[0], r"^5000 memory blocks: \d+\.\d KiB$")
        # The traceback, oldest frame first, each with its source line, as format() prints.
        self.assertEqual(lines[-1].strip(), 'objs = [s.alloc(size=100, tag="bytes") for _ in '
                                            'range(n)]')
        sources = [x.strip() for x in lines[1:] if not x.startswith("  File")]
        for src in ("return workload(5000)", "return level2(workload)",
                    "app = level1(workload)"):
            self.assertIn(src, sources)
        files = [x for x in lines[1:] if x.startswith("  File")]
        self.assertTrue(all(re.match(r'^  File ".+", line \d+$', x) for x in files), lines)
        # The stdlib's own tracemalloc prints the same shape for the same program.
        std = run_printing(lambda: example(std_tracemalloc, self.py_workload))
        self.assertRegex(std[0], r"^\d+ memory blocks: \d+\.\d KiB$")
        self.assertTrue(all(x.startswith("  File") or x.startswith("    ") for x in std[1:]))

    def test_pretty_top(self):
        s = self.s
        globs = {"linecache": linecache, "os": os, "tracemalloc": s.tracemalloc}
        # The documentation's display_top, as it is.
        exec(textwrap.dedent('''
            def display_top(snapshot, key_type='lineno', limit=10):
                snapshot = snapshot.filter_traces((
                    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
                    tracemalloc.Filter(False, "<unknown>"),
                ))
                top_stats = snapshot.statistics(key_type)

                print("Top %s lines" % limit)
                for index, stat in enumerate(top_stats[:limit], 1):
                    frame = stat.traceback[0]
                    print("#%s: %s:%s: %.1f KiB"
                          % (index, frame.filename, frame.lineno, stat.size / 1024))
                    line = linecache.getline(frame.filename, frame.lineno).strip()
                    if line:
                        print('    %s' % line)

                other = top_stats[limit:]
                if other:
                    size = sum(stat.size for stat in other)
                    print("%s other: %.1f KiB" % (len(other), size / 1024))
                total = sum(stat.size for stat in top_stats)
                print("Total allocated size: %.1f KiB" % (total / 1024))
            '''), globs)
        # `tracemalloc.Filter` of the session's module is the stdlib's.
        globs["tracemalloc"] = type("tracemalloc", (), {"Filter": heapd.Filter})
        s.tracemalloc.start()
        objs, line = self.workload(300)
        anon = [s.alloc(size=1000, site="") for _ in range(10)]  # no site: <unknown>
        snapshot = s.tracemalloc.take_snapshot()
        lines = run_printing(lambda: globs["display_top"](snapshot))
        self.assertEqual(lines[0], "Top 10 lines")
        self.assertRegex(lines[1], r"^#1: %s:%d: \d+\.\d KiB$" % (re.escape(__file__), line))
        self.assertEqual(lines[2].strip(), 'objs = [s.alloc(size=100, tag="bytes") for _ in '
                                           'range(n)]')
        self.assertNotIn("<unknown>", "\n".join(lines))  # filtered out, as the docs mean it
        self.assertRegex(lines[-1], r"^Total allocated size: \d+\.\d KiB$")
        s.tracemalloc.stop()
        del objs, anon

    def test_record_the_current_and_peak_size(self):
        s = self.s
        tracemalloc = s.tracemalloc

        def example():
            tracemalloc.start()

            # Example code: compute a sum with a large temporary list
            large_sum = len([s.alloc(size=8) for _ in range(2000)])

            first_size, first_peak = tracemalloc.get_traced_memory()

            tracemalloc.reset_peak()

            # Example code: compute a sum with a small temporary list
            small_sum = len([s.alloc(size=8) for _ in range(20)])

            second_size, second_peak = tracemalloc.get_traced_memory()

            print(f"{first_size=}, {first_peak=}")
            print(f"{second_size=}, {second_peak=}")
            tracemalloc.stop()
            return large_sum, small_sum

        lines = run_printing(example)
        m1 = re.match(r"^first_size=(\d+), first_peak=(\d+)$", lines[0])
        m2 = re.match(r"^second_size=(\d+), second_peak=(\d+)$", lines[1])
        self.assertTrue(m1 and m2, lines)
        first_size, first_peak = map(int, m1.groups())
        second_size, second_peak = map(int, m2.groups())
        # As the documentation says of its own figures: the large list's peak is far above
        # the small one's, and reset_peak() made the second peak that of the small list.
        self.assertGreater(first_peak, 50 * second_peak)
        self.assertLess(second_peak, first_peak)
        self.assertLessEqual(second_size, second_peak)


if __name__ == "__main__":
    unittest.main()
