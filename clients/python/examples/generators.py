#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Generators and iterators: one value in memory at a time.

The tutorial's generator::

    def count_up_to(n):
        count = 1
        while count <= n:
            yield count
            count += 1

    for number in count_up_to(5):
        print(number)

and iterator::

    class Reverse:
        def __init__(self, data):
            self.data = data
            self.index = len(data)
        def __iter__(self):
            return self
        def __next__(self):
            if self.index == 0:
                raise StopIteration
            self.index = self.index - 1
            return self.data[self.index]

    rev = Reverse('giraffe')
    for char in rev:
        print(char)

Here the numbers are int objects in a heapd session.  The generator hands out one at
a time and each is released when the loop moves on, so the heap's peak (measured with
``s.tracemalloc``) stays at a number or two, where building the whole list first
holds them all.  ``s.gc.iter_objects()`` is itself a generator that pages through the heap
(``s.gc.get_objects()`` returns a list, as the stdlib's does).

Usage: generators.py [URL]
"""

import sys

import heapd


def make_int(s, value):
    return s.alloc(data=value.to_bytes(8, "little"), tag="int")


def read_int(ref):
    return int.from_bytes(ref.read(), "little")


def count_up_to(s, n):
    """Yields heap ints 1..n, one at a time."""
    count = 1
    while count <= n:
        yield make_int(s, count)
        count += 1


def list_up_to(s, n):
    """Builds a heap list of ints 1..n all at once."""
    lst = s.alloc(slots=n, tag="list")
    for i in range(n):
        with make_int(s, i + 1) as item:
            lst[i] = item
    return lst


class Reverse:
    """Iterates over the bytes of a heap string object from the end."""

    def __init__(self, data):
        self.data = data
        self.index = data.info().size

    def __iter__(self):
        return self

    def __next__(self):
        if self.index == 0:
            raise StopIteration
        self.index = self.index - 1
        return self.data.read(self.index, 1).decode()


def main(url=None):
    with heapd.connect(url) as s:
        print("-- for number in count_up_to(5)")
        for number in count_up_to(s, 5):
            print(read_int(number))
        del number

        print("-- peak memory: lazy generator vs. a list built first")
        tm = s.tracemalloc
        tm.start()
        total = sum(read_int(n) for n in count_up_to(s, 500))
        lazy_peak = tm.get_traced_memory()[1]
        tm.reset_peak()
        lst = list_up_to(s, 500)
        total_list = sum(read_int(item) for item in lst)
        list_peak = tm.get_traced_memory()[1]
        del lst
        tm.stop()
        print(f"generator: sum {total}, peak {lazy_peak} bytes")
        print(f"list:      sum {total_list}, peak {list_peak} bytes")

        print("-- for char in Reverse('giraffe')")
        with s.alloc(data=b"giraffe", tag="str") as word:
            for char in Reverse(word):
                print(char)

        print("-- s.gc.iter_objects() streams the heap page by page")
        with s.scope():
            objs = [s.alloc(slots=1, tag="Obj") for _ in range(250)]
            seen = sum(1 for _ in s.gc.iter_objects(page_size=64))
            print(f"the collector tracks {seen} objects (read 64 at a time); "
                  f"we made {len(objs)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
