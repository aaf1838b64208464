#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Inspecting reference counts, as ``sys.getrefcount`` does.

Two tutorial examples::

    import sys
    a = []
    print(sys.getrefcount(a))  # usually higher than expected: the argument is a reference
    b = a
    print(sys.getrefcount(a))  # increases
    del b
    print(sys.getrefcount(a))  # decreases

and::

    a = [1, 2, 3]
    print(sys.getrefcount(a))  # 2 ('a', and the argument)
    b = a
    print(sys.getrefcount(a))  # 3
    del a
    print(sys.getrefcount(b))  # 2
    del b                      # the list [1, 2, 3] is reclaimed

``s.getrefcount(ref)`` counts the client's references plus the slots pointing at the
object.  Passing the argument takes no temporary reference, so every number here is
one less than CPython prints.

Usage: getrefcount.py [URL]
"""

import sys

import heapd


def make_int(s, value):
    """An int object: no slots (atomic, like Python's ints), the value as payload."""
    return s.alloc(data=value.to_bytes(8, "little", signed=True), tag="int")


def main(url=None):
    with heapd.connect(url) as s:
        print("-- a = []")
        a = s.alloc(slots=4, tag="list")
        print(f"getrefcount(a) = {s.getrefcount(a)}   (CPython prints 2: the argument is one)")
        b = a.share()
        print(f"b = a;  getrefcount(a) = {s.getrefcount(a)}   (increases)")
        del b
        print(f"del b;  getrefcount(a) = {s.getrefcount(a)}   (decreases)")
        del a

        print("-- a = [1, 2, 3]")
        a = s.alloc(slots=3, tag="list")
        for i, value in enumerate((1, 2, 3)):
            with make_int(s, value) as item:  # the temporary is released after the store
                a[i] = item
        print(f"getrefcount(a) = {s.getrefcount(a)}")
        b = a.share()
        print(f"b = a;  getrefcount(a) = {s.getrefcount(a)}")
        del a
        print(f"del a;  getrefcount(b) = {s.getrefcount(b)}")
        first = b[0]
        value = int.from_bytes(first.read(), "little", signed=True)
        print(f"b[0] = {value}, held by the list and by us: getrefcount = {s.getrefcount(first)}")
        del first
        print(f"objects before del b: {s.stats()['objects']}   (the list and three ints)")
        del b
        print(f"objects after del b:  {s.stats()['objects']}   (the list is reclaimed, and "
              "its items with it)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
