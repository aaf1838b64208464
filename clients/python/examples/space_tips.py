#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Ways to reduce space: slicing copies, and concatenation makes new objects.

The tutorial's tips: "Avoid list slicing: list slicing creates a copy of the object";
"Instead of ``for index in range(len(array))`` use ``for item in array``"; and on
strings::

    a = "millet"
    a = a + " ugali"
    print(a)  # output millet ugali

Strings are immutable, so ``a + " ugali"`` allocates a third object holding both, and
rebinding ``a`` releases the old one.  A slice is a new list whose slots take one more
reference to every item.  Iterating over a heap list's slots reads each item once.

Usage: space_tips.py [URL]
"""

import sys

import heapd


def new_str(s, text):
    return s.alloc(data=text.encode(), tag="str")


def concat(s, left, right):
    """left + right: a new string object; the operands are untouched."""
    lsize, rsize = left.info().size, right.info().size
    out = s.alloc(size=lsize + rsize, tag="str")
    out.write(0, left.read())
    out.write(lsize, right.read())
    return out


def main(url=None):
    with heapd.connect(url) as s:
        print("-- a = 'millet'; a = a + ' ugali'")
        a = new_str(s, "millet")
        suffix = new_str(s, " ugali")
        print(f"before: {s.stats()['objects']} string objects")
        a = concat(s, a, suffix)  # the old 'millet' is released on rebinding
        del suffix
        print(f"print(a) -> {a.read().decode()}")
        print(f"after:  {s.stats()['objects']} string object "
              "(the result; 'millet' and ' ugali' were freed)")
        del a

        print("-- slicing copies: array[:] is a new list referencing every item")
        array = s.alloc(slots=5, tag="list")
        for i in range(5):
            with new_str(s, f"item{i}") as item:
                array[i] = item
        first = array[0]
        print(f"getrefcount(array[0]) = {s.getrefcount(first)} (the list, and our Ref)")
        copy = s.alloc(slots=5, tag="list")  # copy = array[:]
        for i, item in enumerate(array):  # for item in array, not range(len(array))
            copy[i] = item
        del item
        print(f"after copy = array[:]: getrefcount(array[0]) = {s.getrefcount(first)}, "
              f"and the copy costs {s.getsizeof(copy)} bytes more")
        del copy
        print(f"del copy: getrefcount(array[0]) = {s.getrefcount(first)}")
        del first, array


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
