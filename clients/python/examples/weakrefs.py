#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Weak references: breaking cycles without the collector.

The tutorials' advice: "Avoid circular references: break cycles manually if necessary
or use weak references."  A parent that holds its child and a child that holds its
parent form a cycle that only the collector can free.  If the child's way back to
the parent is a weak reference, reference counting frees both as soon as the last
outside reference goes, and the weak reference's callback reports it (as
``weakref.ref(obj, callback)`` does).

Usage: weakrefs.py [URL]
"""

import sys

import heapd


def main(url=None):
    with heapd.connect(url) as s:
        s.gc.disable()  # show that no collection is needed

        print("-- strong back reference: parent <-> child")
        parent = s.alloc(slots=1, tag="Parent")
        child = s.alloc(slots=1, tag="Child")
        parent[0] = child
        child[0] = parent
        del parent, child
        print(f"after del: {s.stats()['objects']} objects alive (a cycle)")
        print(f"gc.collect() frees {s.gc.collect()}")

        print("-- weak back reference: parent -> child, child ~> parent")
        parent = s.alloc(slots=1, tag="Parent")
        with s.alloc(tag="Child") as child:
            parent[0] = child
        back = s.weakref(parent, callback=lambda w: print(f"   callback: {w!r} was cleared"))
        target = back()
        print(f"back() gives {target!r}, the parent; refcount {s.getrefcount(parent)}")
        del target
        print("del parent:")
        del parent
        s.flush()
        print(f"{s.stats()['objects']} objects alive, no collection needed; back() = {back()}")
        back.close()
        s.gc.enable()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
