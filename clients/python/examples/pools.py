#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The allocator underneath: arenas, pools and blocks.

The tutorials: "Python uses a specialized allocator (PyMalloc) for small objects.
Larger objects may use the system's standard allocator", and "Memory is managed in
layers: Arenas (large blocks of memory), Pools (subdivisions of arenas), Blocks
(individual object storage)".  heapd's engine is that allocator: 1 MiB arenas, 16 KiB
pools of one size class each, blocks of 16..512 bytes, and anything larger from the
system allocator.  ``s.stats()`` shows all three layers, like
``sys._debugmallocstats()``.

Usage: pools.py [URL]
"""

import sys

import heapd


def show(s, title):
    st = s.stats()
    print(f"{title}: {st['objects']} objects, {st['arenas_current']} arenas, "
          f"{sum(c['pools'] for c in st['classes'])} pools, "
          f"{st['large_objects']} large objects ({st['large_bytes']} bytes)")
    return st


def main(url=None):
    with heapd.connect(url) as s:
        show(s, "empty heap")
        with s.scope():
            small = [s.alloc(size=8, tag="small") for _ in range(1000)]
            st = show(s, "1000 small objects")
            for c in st["classes"]:
                print(f"   size class {c['block_size']:3} bytes: {c['pools']} pools, "
                      f"{c['blocks_in_use']} blocks in use, {c['blocks_available']} free")
            big = s.alloc(size=100_000, tag="big")
            print(f"getsizeof(small[0]) = {s.getsizeof(small[0])}, "
                  f"getsizeof(big) = {s.getsizeof(big)}")
            show(s, "plus one large object")
            del small, big
        st = show(s, "all released")
        print(f"arenas mapped since the start: {st['arenas_allocated_total']}, "
              f"returned to the OS: {st['arenas_reclaimed']}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
