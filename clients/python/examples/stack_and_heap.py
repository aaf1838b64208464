#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Stack and heap: objects live on the heap, a function's frame holds references.

The tutorials: "Python allocates memory from the heap for storing objects, while the
stack is used to store references to these objects ... variables stored in the stack
are cleaned up when they go out of scope."  And: "Global objects will never be deleted
until the program stops, unless deleted manually."

In a heapd session the heap is on the server and the references are ``Ref`` objects.
A function's locals are released when it returns, as in Python, and ``s.scope()``
makes a stack frame explicit: every reference taken inside is released at its end,
except the one the function returns (``frame.keep(ref)``).

Usage: stack_and_heap.py [URL]
"""

import sys

import heapd


def build_pair(s):
    """Allocates two linked objects and returns the first, like a function returning
    a new object: everything else the frame referenced is released."""
    with s.scope() as frame:
        head = s.alloc(slots=1, tag="Head")
        tail = s.alloc(slots=0, size=16, tag="Tail")
        head[0] = tail
        scratch = s.alloc(size=256, tag="Scratch")
        scratch.write(0, b"temporary work")
        print(f"   inside build_pair: {s.stats()['objects']} objects")
        return frame.keep(head)


def main(url=None):
    with heapd.connect(url) as s:
        print("-- a call frame: locals are released when the function returns")
        head = build_pair(s)
        print(f"after the call: {s.stats()['objects']} objects (Head and Tail; Scratch is gone)")

        print("-- a global stays until deleted")
        global CACHE
        CACHE = s.alloc(size=1024, tag="Global")
        print(f"with the global: {s.stats()['objects']} objects")
        del CACHE
        del head
        print(f"after del: {s.stats()['objects']} objects")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
