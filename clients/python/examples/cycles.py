#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Circular references and the cycle collector.

Two tutorial examples.  First, two lists that hold each other::

    a = []
    b = []
    a.append(b)
    b.append(a)   # circular reference

    import gc
    gc.collect()  # force a garbage collection
    gc.disable()  # disable automatic garbage collection

Second, a class whose instances point at each other::

    class Node:
        def __init__(self):
            self.next = None

    a = Node()
    b = Node()
    a.next = b
    b.next = a
    del a
    del b         # reference counting alone cannot free them
    gc.collect()  # the collector does

Reference counts never reach zero inside a cycle; ``s.gc.collect()`` finds the
unreachable cycle on the server and frees it.

Usage: cycles.py [URL]
"""

import sys

import heapd


class Node:
    """A Python view of a heapd object with one slot, ``next``."""

    __slots__ = ("ref",)

    def __init__(self, s):
        self.ref = s.alloc(slots=1, tag="Node", finalizer=True)

    @property
    def next(self):
        """The object in the slot, as a new heapd.Ref (or None)."""
        return self.ref[0]

    @next.setter
    def next(self, other):
        self.ref[0] = None if other is None else other.ref


def lists(s):
    print("-- two lists holding each other")
    a = s.alloc(slots=1, tag="list")
    b = s.alloc(slots=1, tag="list")
    a[0] = b  # a.append(b)
    b[0] = a  # b.append(a)
    print(f"refcounts: a = {s.getrefcount(a)}, b = {s.getrefcount(b)}  (a variable and a slot)")
    del a, b
    print(f"after del a, b: {s.stats()['objects']} objects still alive (each holds the other)")
    found = s.gc.collect()
    print(f"gc.collect() found {found} unreachable objects; "
          f"{s.stats()['objects']} objects left")
    s.gc.disable()
    print(f"gc.disable(): automatic collection enabled = {s.gc.isenabled()}")
    s.gc.enable()


def nodes(s):
    print("-- Node objects pointing at each other")
    s.on_finalize = lambda ev: print(f"   the collector freed {ev.tag} {ev.handle:#x}")
    a = Node(s)
    b = Node(s)
    a.next = b
    b.next = a
    del a
    del b
    s.flush()
    print(f"after del a, del b: {s.stats()['objects']} objects alive, "
          "reference counting cannot free them")
    print("gc.collect():")
    found = s.gc.collect()
    print(f"found {found}; {s.stats()['objects']} objects left")
    s.on_finalize = None


def main(url=None):
    with heapd.connect(url) as s:
        lists(s)
        nodes(s)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
