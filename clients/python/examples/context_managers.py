#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Context managers: cleanup that does not wait for the collector.

The tutorial::

    class ManagedResource:
        def __enter__(self):
            print("Resource acquired")
            return self

        def __exit__(self, exc_type, exc_val, exc_tb):
            print("Resource released")

        def do_something(self):
            print("Doing something with the resource")

    with ManagedResource() as resource:
        resource.do_something()

Here the resource is a 4 KiB buffer in a heapd session, acquired in ``__enter__`` and
released in ``__exit__``, whether the block ends normally or by an exception.  heapd's
own objects are context managers too: the session (goodbye at the end), each
``Ref`` (released at the end), and ``s.scope()`` (every reference taken inside).

Usage: context_managers.py [URL]
"""

import sys

import heapd


class ManagedResource:
    """A heapd buffer held for the duration of a ``with`` block."""

    def __init__(self, session, size=4096):
        self.session = session
        self.size = size
        self.buffer = None

    def __enter__(self):
        self.buffer = self.session.alloc(size=self.size, tag="Resource", finalizer=True)
        print("Resource acquired")
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.buffer.release()
        self.buffer = None
        print("Resource released")

    def do_something(self):
        print("Doing something with the resource")
        self.buffer.write(0, b"hello from a context manager")


def main(url=None):
    with heapd.connect(url) as s:
        s.on_finalize = lambda ev: print(f"   (the server freed the {ev.tag})")

        with ManagedResource(s) as resource:
            resource.do_something()

        print("-- the resource is released even when the block fails")
        try:
            with ManagedResource(s) as resource:
                raise RuntimeError("something went wrong")
        except RuntimeError as exc:
            print(f"caught: {exc}")

        print("-- a Ref is a context manager")
        with s.alloc(size=16, tag="Buffer", finalizer=True) as buf:
            buf.write(0, b"scratch")
            print(f"inside: {buf.read(0, 7)!r}")
        print(f"after the block: {s.stats()['objects']} objects")

        print("-- s.scope() releases everything taken inside it")
        with s.scope():
            temps = [s.alloc(slots=1, tag=f"Temp{i}", finalizer=True) for i in range(3)]
            print(f"inside the scope: {s.stats()['objects']} objects held by {len(temps)} Refs")
        print(f"after the scope: {s.stats()['objects']} objects")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
