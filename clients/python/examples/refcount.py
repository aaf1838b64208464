#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Reference counting: ``a = []``, ``b = a``, ``del a``, ``del b``.

The tutorials' first example::

    a = []  # reference count = 1
    b = a   # reference count = 2
    del a   # reference count = 1
    del b   # reference count = 0, memory is freed

Here the list lives in a heapd session.  A ``heapd.Ref`` plays the variable: it owns
one reference.  Python's ``b = a`` takes a reference, which with heapd is spelled
``b = a.share()`` (a plain ``b = a`` binds a second name to the same Ref, which the
server never sees).  ``del`` works as in Python: when the last name of a Ref goes, its
reference is dropped, and the server frees the object when the count reaches zero.

Usage: refcount.py [URL]   (default: $HEAPD_URL, else tcp://127.0.0.1:7420)
"""

import sys

import heapd


def main(url=None):
    with heapd.connect(url) as s:
        # Ask the server to tell us when the list is freed, as __del__ would.
        s.on_finalize = lambda ev: print(f"          (the server freed the {ev.tag})")

        a = s.alloc(slots=4, tag="list", finalizer=True)  # a = []
        print(f"a = []    reference count = {s.getrefcount(a)}")

        b = a.share()  # b = a
        print(f"b = a     reference count = {s.getrefcount(b)}")

        del a
        print(f"del a     reference count = {s.getrefcount(b)}")

        print("del b     reference count = 0, memory is freed")
        del b
        # The release is sent with the next request; flush() is a request that does
        # nothing else.  The finalizer event arrives during it.
        s.flush()
        print(f"          objects left in the heap: {s.stats()['objects']}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
