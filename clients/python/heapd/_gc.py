# SPDX-License-Identifier: MIT
"""The session's cycle collector, shaped like Python's ``gc`` module.

``s.gc`` runs CPython 3.11's collector over the session's heap on the server; each
method is the ``gc`` function of the same name, with the same arguments and the same
shape of result (``get_objects()`` a list, ``get_count()`` a tuple, ``garbage`` a list
you can ``clear()``).  Objects are passed and returned as :class:`heapd.Ref`; every
``Ref`` a method returns owns a new reference (release it, or take it inside a ``with
s.scope():`` block).  In an asyncio session every method is a coroutine; in a pipeline
(``p.gc``) the single-request ones are queued.

Extras, beyond the stdlib: :meth:`GC.iter_objects` pages through a heap of any size in
bounded memory; ``gc.callbacks`` info dicts carry ``"duration"`` (see :class:`GC`);
:meth:`GC.set_mode` and :meth:`GC.get_mode` choose how automatic collections of generation
2 run: ``"generational"`` (CPython 3.11's, the default) or ``"incremental"`` (in increments
of bounded work, heapd's own).
"""

__all__ = ["GC", "GarbageList", "DEBUG_STATS", "DEBUG_COLLECTABLE", "DEBUG_UNCOLLECTABLE",
           "DEBUG_SAVEALL", "DEBUG_LEAK"]

import operator
import reprlib

from ._ops import OPS

# The debugging flags of gc.set_debug(), with the engine's values (heap.h HD_GC_DEBUG_*),
# which are CPython's.
DEBUG_STATS = 1
DEBUG_COLLECTABLE = 2
DEBUG_UNCOLLECTABLE = 4
DEBUG_SAVEALL = 32
DEBUG_LEAK = DEBUG_COLLECTABLE | DEBUG_UNCOLLECTABLE | DEBUG_SAVEALL

_COLLECT = OPS["gc_collect"]
_GET_OBJECTS = OPS["gc_get_objects"]
_GARBAGE = OPS["gc_garbage"]
_CLOSE_CURSOR = OPS["gc_close_cursor"]


def _none(session, value):
    return None


def _tuple(session, value):
    return tuple(value)


def _adopt_all(session, handles):
    return session._adopt_all(handles)


def _stats(session, result):
    return [{"collections": g.collections, "collected": g.collected,
             "uncollectable": g.uncollectable} for g in result]


def _c_int(value, too_large):
    """value as a C int, refused as CPython's argument parsing refuses it: TypeError for a
    non-integer, OverflowError outside -2**31 .. 2**31-1 (too_large is the message CPython
    gives above the range: gc.set_threshold and gc.set_debug word it differently)."""
    value = operator.index(value)
    if value > 2**31 - 1:
        raise OverflowError(too_large)
    if value < -2**31:
        raise OverflowError("signed integer is less than minimum")
    return value


# gc_set_mode's modes, by the wire's GcMode values (the names are gc_mode's in heapd.yaml).
_MODES = ("generational", "incremental")


def _mode_name(session, result):
    return _MODES[result.mode] if result.mode < len(_MODES) else result.mode


def _mode_info(session, result):
    return {"mode": _mode_name(session, result), "increment_objects": result.increment_objects,
            "phase": ("idle", "marking", "sweeping")[result.phase] if result.phase < 3
            else result.phase, "increments": result.increments, "cycles": result.cycles}


def _signed32(session, value):
    value &= 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


class GC:
    """The ``gc`` module of one session (``s.gc``).

    Attributes:
        callbacks: a list of callables, as ``gc.callbacks``: each is called as
            ``callback(phase, info)`` around every collection of the heap, automatic or
            not, with ``phase`` ``"start"`` or ``"stop"`` and ``info`` a dict with exactly
            the stdlib's keys, ``"generation"``, ``"collected"`` and ``"uncollectable"``,
            plus, at ``"stop"``, the documented extra ``"duration"``: the collection's
            time in seconds (the key CPython 3.15 adds).  They run during a call on the
            session (see :mod:`heapd`), in the thread that made it; in an asyncio
            session, on its event loop.
    """

    DEBUG_STATS = DEBUG_STATS
    DEBUG_COLLECTABLE = DEBUG_COLLECTABLE
    DEBUG_UNCOLLECTABLE = DEBUG_UNCOLLECTABLE
    DEBUG_SAVEALL = DEBUG_SAVEALL
    DEBUG_LEAK = DEBUG_LEAK

    def __init__(self, owner, callbacks=None):
        self._owner = owner  # the session, or a pipeline
        self.callbacks = [] if callbacks is None else callbacks

    def _do(self, name, args=None, finish=None):
        op = OPS[name]
        return self._owner._do(op, op.args() if args is None else args, finish)

    def collect(self, generation=2):
        """Collects generations 0..generation; returns the unreachable objects found."""
        return self._owner._do(_COLLECT, _COLLECT.args(generation=generation), None)

    def enable(self):
        """Turns automatic collection on."""
        return self._do("gc_enable", finish=_none)

    def disable(self):
        """Turns automatic collection off (``collect()`` still works)."""
        return self._do("gc_disable", finish=_none)

    def isenabled(self):
        """True if automatic collection is on."""
        return self._do("gc_isenabled")

    def get_count(self):
        """The current collection counts, a tuple ``(count0, count1, count2)``."""
        return self._do("gc_get_count", finish=_tuple)

    def get_threshold(self):
        """The collection thresholds, a tuple; ``(700, 10, 10)`` by default."""
        return self._do("gc_get_threshold", finish=_tuple)

    def set_threshold(self, threshold0, threshold1=None, threshold2=None):
        """Sets the collection thresholds, as ``gc.set_threshold(t0[, t1[, t2]])``."""
        values = [_c_int(threshold0, "signed integer is greater than maximum")]
        for t in (threshold1, threshold2):
            if t is None:
                break
            values.append(_c_int(t, "signed integer is greater than maximum"))
        op = OPS["gc_set_threshold"]
        return self._owner._do(op, op.args(threshold=values), _none)

    def get_stats(self):
        """Per-generation statistics: a list of three dicts with ``collections``,
        ``collected`` and ``uncollectable``."""
        return self._do("gc_get_stats", finish=_stats)

    def freeze(self):
        """Moves every tracked object into the permanent generation."""
        return self._do("gc_freeze", finish=_none)

    def unfreeze(self):
        """Moves the permanent generation back into the oldest generation."""
        return self._do("gc_unfreeze", finish=_none)

    def get_freeze_count(self):
        """The number of objects in the permanent generation."""
        return self._do("gc_get_freeze_count")

    def is_tracked(self, ref):
        """True if the collector tracks the object (it has slots)."""
        op = OPS["gc_is_tracked"]
        return self._owner._do(op, op.args(handle=self._owner._handle(ref)), None)

    def get_referrers(self, *refs):
        """The tracked objects with a slot pointing at any of ``refs``, as new Refs."""
        op = OPS["gc_get_referrers"]
        handles = [self._owner._handle(r) for r in refs]
        return self._owner._do(op, op.args(handles=handles), _adopt_all)

    def get_referents(self, *refs):
        """The objects the slots of ``refs`` point at, as new Refs: every non-empty slot
        in order, duplicates kept, as ``gc.get_referents``."""
        op = OPS["gc_get_referents"]
        handles = [self._owner._handle(r) for r in refs]
        return self._owner._do(op, op.args(handles=handles), _adopt_all)

    def get_objects(self, generation=None):
        """Every object the collector tracks (in ``generation``, or all), as a list of
        new Refs, as ``gc.get_objects()``.  See :meth:`iter_objects` for a heap too large
        to hold as one list."""
        return self._owner._drive(self._objects_steps(generation, 0))

    def _objects_steps(self, generation, page_size):
        owner = self._owner
        refs = []
        cursor = 0
        try:
            while True:
                args = _GET_OBJECTS.args(generation=generation, cursor=cursor, max=page_size)
                (page,) = yield [(_GET_OBJECTS, args, None)]
                handles, cursor = page
                refs.extend(owner._adopt_all(handles))
                if not cursor:
                    return refs
        finally:
            if cursor:
                owner._defer("gc_close_cursor", cursor=cursor)

    def iter_objects(self, generation=None, page_size=0):
        """Yields every object the collector tracks (in ``generation``, or all), as Refs.

        A generator: it fetches ``page_size`` objects at a time (0 = as many as fit in
        a response), so a heap of any size streams through in bounded memory.  Closing
        the generator early releases the server's cursor.  (This is what
        ``get_objects()`` was before it returned a list, as the stdlib's does.)
        """
        session = self._owner
        cursor = 0
        try:
            while True:
                args = _GET_OBJECTS.args(generation=generation, cursor=cursor, max=page_size)
                handles, cursor = session._do(_GET_OBJECTS, args, None)
                # Wrap the whole page first: Refs not yet yielded when the generator is
                # closed are freed, and so released, with it.
                page = session._adopt_all(handles)
                page.reverse()
                while page:
                    yield page.pop()
                if not cursor:
                    return
        finally:
            if cursor:
                # A generator may be finalized from anywhere (even inside another call),
                # so the close waits for the next request instead of being sent here.
                session._defer("gc_close_cursor", cursor=cursor)

    def set_mode(self, mode, increment_objects=None):
        """Sets how automatic collections of generation 2 run (heapd's own):
        ``"generational"``, CPython 3.11's full collections, or ``"incremental"``, a cycle
        in increments of at most ``increment_objects`` units of work (None: as it is).
        Leaving incremental mode ends a running cycle first; ``collect()`` is always whole."""
        try:
            wire = _MODES.index(mode)
        except ValueError:
            raise ValueError("gc mode must be 'generational' or 'incremental', not %r"
                             % (mode,)) from None
        n = 0 if increment_objects is None else operator.index(increment_objects)
        if increment_objects is not None and not 1 <= n <= 2**32:
            raise ValueError("increment_objects must be 1 .. 2**32")
        op = OPS["gc_set_mode"]
        return self._owner._do(op, op.args(mode=wire, increment_objects=n), _none)

    def get_mode(self):
        """``"generational"`` or ``"incremental"``."""
        return self._do("gc_get_mode", finish=_mode_name)

    def get_mode_info(self):
        """The mode and the incremental collector's state: a dict with ``mode``,
        ``increment_objects``, ``phase`` (``"idle"``, ``"marking"``, ``"sweeping"``),
        ``increments`` (of the running cycle) and ``cycles`` (completed)."""
        return self._do("gc_get_mode", finish=_mode_info)

    def set_debug(self, flags):
        """Sets the debugging flags (``DEBUG_SAVEALL`` keeps collected cycles in
        :attr:`garbage` instead of freeing them)."""
        # Any C int, -1 included, as in CPython; the wire carries its 32 bits unsigned.
        flags = _c_int(flags, "Python int too large to convert to C int")
        op = OPS["gc_set_debug"]
        return self._owner._do(op, op.args(flags=flags & 0xFFFFFFFF), _none)

    def get_debug(self):
        """The debugging flags."""
        return self._do("gc_get_debug", finish=_signed32)

    @property
    def garbage(self):
        """The heap's ``gc.garbage``: a live view of the server's list (:class:`GarbageList`).

        Uncollectable cycles (``legacy_finalizer`` objects) and, under ``DEBUG_SAVEALL``,
        every collected cycle land there.  ``len()``, indexing, iteration and comparison
        read the server's list as it is now; ``gc.garbage.clear()`` and ``del
        gc.garbage[:]`` empty it, dropping its references, as in CPython.
        """
        return self._owner._garbage_view()

    def clear_garbage(self):
        """Empties ``gc.garbage``, dropping its references (``gc.garbage.clear()``)."""
        return self._do("gc_garbage_clear", finish=_none)

    def _garbage_steps(self, start=0, stop=None):
        """Reads gc.garbage[start:stop] (None: to the end) as new Refs, page by page."""
        owner = self._owner
        refs = []
        while stop is None or start + len(refs) < stop:
            want = 0 if stop is None else stop - start - len(refs)
            args = _GARBAGE.args(start=start + len(refs), max=want)
            (page,) = yield [(_GARBAGE, args, None)]
            handles, total = page
            refs.extend(owner._adopt_all(handles))
            if not handles or start + len(refs) >= total:
                break
        return refs

    def _garbage_len_steps(self):
        (page,) = yield [(_GARBAGE, _GARBAGE.args(start=0, max=1, borrow=True), None)]
        return page.total


class GarbageList:
    """``s.gc.garbage``: the server's garbage list, read and cleared as the stdlib's list.

    Every read asks the server (one round trip), so the view is always current; each
    element is a new :class:`heapd.Ref` owning its own reference.  Deleting entries other
    than all of them (``del garbage[:]``) is not possible on the server and raises
    :class:`TypeError`, as does assigning."""

    __slots__ = ("_gc",)

    def __init__(self, gc):
        self._gc = gc

    def _drive(self, gen):
        return self._gc._owner._drive(gen)

    def __len__(self):
        return self._drive(self._gc._garbage_len_steps())

    def __bool__(self):
        return len(self) > 0

    def __iter__(self):
        return iter(self._drive(self._gc._garbage_steps()))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._drive(self._gc._garbage_steps())[index]
        if not isinstance(index, int):
            raise TypeError(f"list indices must be integers or slices, not "
                            f"{type(index).__name__}")
        if index < 0:
            index += len(self)
            if index < 0:
                raise IndexError("list index out of range")
        refs = self._drive(self._gc._garbage_steps(index, index + 1))
        if not refs:
            raise IndexError("list index out of range")
        return refs[0]

    def __delitem__(self, index):
        if isinstance(index, slice) and index == slice(None):
            self.clear()
            return
        raise TypeError("gc.garbage entries can only be deleted all at once "
                        "(del gc.garbage[:] or gc.garbage.clear())")

    def __setitem__(self, index, value):
        raise TypeError("gc.garbage is the server's list: it cannot be assigned to")

    def clear(self):
        """Empties the server's garbage list, dropping its references."""
        return self._gc.clear_garbage()

    def copy(self):
        """The list as it is now, as a list of new Refs."""
        return list(self)

    def __eq__(self, other):
        if isinstance(other, GarbageList):
            other = list(other)
        if not isinstance(other, list):
            return NotImplemented
        return list(self) == other

    __hash__ = None

    def __repr__(self):
        return reprlib.repr(list(self))


class AsyncGarbageList:
    """``s.gc.garbage`` of an asyncio session: ``await garbage.list()``,
    ``await garbage.count()``, ``await garbage.clear()``, ``async for ref in garbage``."""

    __slots__ = ("_gc",)

    def __init__(self, gc):
        self._gc = gc

    def list(self):
        """The list as it is now, as a list of new Refs (a coroutine)."""
        return self._gc._owner._drive(self._gc._garbage_steps())

    def count(self):
        """``len(gc.garbage)`` (a coroutine)."""
        return self._gc._owner._drive(self._gc._garbage_len_steps())

    def clear(self):
        """Empties the server's garbage list (a coroutine)."""
        return self._gc.clear_garbage()

    async def __aiter__(self):
        for ref in await self.list():
            yield ref

    def __len__(self):
        raise TypeError("use await s.gc.garbage.count() in an asyncio session")
