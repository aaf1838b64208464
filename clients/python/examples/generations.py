#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Generations and thresholds of the cycle collector.

The tutorial::

    import gc
    gc.get_threshold()   # outputs (700, 10, 10)
    gc.get_count()       # the number of objects in each generation's count

A new container starts in generation 0.  When allocations minus deallocations exceed
the first threshold (700), generation 0 is collected and its survivors move to
generation 1; every 10 collections of generation 0 collect generation 1, and every 10
of those generation 2.  This script watches that happen in a heapd session, with
``gc.callbacks`` reporting each automatic collection.

Usage: generations.py [URL]
"""

import sys

import heapd


def main(url=None):
    with heapd.connect(url) as s:
        gc = s.gc
        print(f"gc.get_threshold() = {gc.get_threshold()}")
        print(f"gc.get_count()     = {gc.get_count()}")

        collections = []

        def on_collect(phase, info):
            if phase == "stop":
                collections.append(info["generation"])
                print(f"   collection of generation {info['generation']}: "
                      f"collected {info['collected']}, took {info['duration'] * 1e6:.0f} us")

        gc.callbacks.append(on_collect)

        # Keep every container alive, so that each collection has survivors to promote.
        keep = []
        with s.scope():
            for i in range(1, 1501):
                keep.append(s.alloc(slots=1, tag="Obj"))
                if i in (1, 350, 700):
                    print(f"after {i:4} allocations: gc.get_count() = {gc.get_count()}")
            print(f"after 1500 allocations: gc.get_count() = {gc.get_count()}")
            print(f"automatic collections so far: {len(collections)}")
            for gen, st in enumerate(gc.get_stats()):
                print(f"   generation {gen}: {st}")
            info = keep[0].info()
            print(f"the first object survived and now lives in generation {info.generation}")

            print("gc.set_threshold(100, 5, 5): generation 0 is collected more often")
            gc.set_threshold(100, 5, 5)
            collections.clear()
            for _ in range(500):
                keep.append(s.alloc(slots=1, tag="Obj"))
            print(f"500 more allocations -> {len(collections)} automatic collections, "
                  f"generations {sorted(set(collections))}")

            print("gc.freeze(): move everything to the permanent generation")
            gc.freeze()
            print(f"gc.get_freeze_count() = {gc.get_freeze_count()}, "
                  f"gc.get_count() = {gc.get_count()}")
            gc.unfreeze()
            keep.clear()
        gc.callbacks.remove(on_collect)
        gc.set_threshold(700, 10, 10)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
