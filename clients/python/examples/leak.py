#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Finding a memory leak with tracing snapshots.

The tutorials' advice: "Monitor memory usage with tools like tracemalloc", and a memory
leak is "memory allocated but never deallocated ... often due to lingering
references".  With Python's tracemalloc::

    tracemalloc.start()
    snapshot1 = tracemalloc.take_snapshot()
    ...  # run the suspect code
    snapshot2 = tracemalloc.take_snapshot()
    for stat in snapshot2.compare_to(snapshot1, 'lineno')[:3]:
        print(stat)

A request handler below keeps every response in a cache that is never emptied.  Each
allocation records its site (this file and line) unless told otherwise, so comparing
snapshots points at the line that leaks.

Usage: leak.py [URL]
"""

import sys

import heapd


class Server:
    """Handles requests; by mistake it keeps every response forever."""

    def __init__(self, s):
        self.s = s
        self.cache = None  # the head of a linked list of cached responses

    def handle(self, request_no):
        s = self.s
        scratch = s.alloc(size=64, tag="Scratch")  # freed at the end of the request
        scratch.write(0, f"request {request_no}".encode())
        response = s.alloc(size=200, slots=1, tag="Response")
        if self.cache is not None:
            response[0] = self.cache  # the new response links to the older ones
        self.cache = response  # the leak: nothing ever trims the cache


def main(url=None):
    with heapd.connect(url) as s:
        tm = s.tracemalloc
        tm.start()
        server = Server(s)
        for i in range(10):
            server.handle(i)

        snapshot1 = tm.take_snapshot()
        for i in range(10, 110):
            server.handle(i)
        snapshot2 = tm.take_snapshot()

        print("Top differences by line (tracemalloc's 'lineno'):")
        for stat in snapshot2.compare_to(snapshot1, "lineno")[:3]:
            print(f"  {stat}")
        print("Top differences by tag:")
        for stat in snapshot2.compare_to(snapshot1, "tag")[:3]:
            print(f"  {stat}")
        print("Largest live allocations:")
        for stat in snapshot2.statistics("tag")[:3]:
            print(f"  {stat}")
        current, peak = tm.get_traced_memory()
        print(f"traced memory: current {current} bytes, peak {peak} bytes")

        print("Fix: drop the cache; the whole chain is freed by reference counting")
        server.cache = None
        snapshot3 = tm.take_snapshot()
        for stat in snapshot3.compare_to(snapshot2, "tag")[:2]:
            print(f"  {stat}")
        tm.stop()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
