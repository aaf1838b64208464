#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""``__slots__``: fixed layouts instead of a per-instance ``__dict__``.

The tutorial::

    class SaveMemory:
        __slots__ = ['name', 'age']  # can only have these attributes
        def __init__(self, name, age):
            self.name = name
            self.age = age

A regular instance keeps its attributes in a dict: the instance points at a dict
object whose table holds keys and values.  With ``__slots__`` the instance itself has
one slot per attribute.  heapd objects are fixed layouts by nature (``slots=N``), so
both shapes can be built and measured: ``s.getsizeof`` per object and the heap's
``object_bytes`` for a thousand instances.

Usage: slots.py [URL]
"""

import sys

import heapd

N = 1000


class SaveMemory:
    """An instance with two slots, ``name`` and ``age``, in one heapd object."""

    __slots__ = ("ref",)
    FIELDS = ("name", "age")

    def __init__(self, s, name, age):
        self.ref = s.alloc(slots=len(self.FIELDS), tag="SaveMemory")
        self.ref[0] = name
        self.ref[1] = age


class WithDict:
    """An instance whose attributes live in a separate dict object.

    The dict is modelled as CPython's: a table of 8 entries, each a key slot and a
    value slot (the keys are the shared attribute-name strings).
    """

    __slots__ = ("ref",)

    def __init__(self, s, keys, name, age):
        self.ref = s.alloc(slots=1, tag="WithDict")
        with s.alloc(slots=16, size=32, tag="dict") as d:
            d[0], d[1] = keys[0], name
            d[2], d[3] = keys[1], age
            self.ref[0] = d


def object_bytes(s):
    return s.stats()["object_bytes"]


def main(url=None):
    with heapd.connect(url) as s:
        name = s.alloc(data=b"Ada", tag="str")
        age = s.alloc(data=(36).to_bytes(8, "little"), tag="int")
        keys = [s.alloc(data=b"name", tag="str"), s.alloc(data=b"age", tag="str")]

        base = object_bytes(s)
        slotted = [SaveMemory(s, name, age) for _ in range(N)]
        slots_bytes = object_bytes(s) - base
        print(f"getsizeof(SaveMemory instance) = {s.getsizeof(slotted[0].ref)} bytes")
        del slotted
        s.flush()

        base = object_bytes(s)
        dicted = [WithDict(s, keys, name, age) for _ in range(N)]
        dict_bytes = object_bytes(s) - base
        first_dict = dicted[0].ref[0]
        print(f"getsizeof(instance) + getsizeof(its dict) = "
              f"{s.getsizeof(dicted[0].ref)} + {s.getsizeof(first_dict)} bytes")
        del first_dict, dicted

        print(f"{N} instances with __slots__: {slots_bytes} bytes")
        print(f"{N} instances with __dict__:  {dict_bytes} bytes")
        print(f"__slots__ saves {100 * (dict_bytes - slots_bytes) / dict_bytes:.0f}%")
        print(f"with every instance gone, getrefcount(name) = {s.getrefcount(name)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
