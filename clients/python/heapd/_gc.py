"""The session's cycle collector, shaped like Python's ``gc`` module.

``s.gc`` runs CPython 3.11's collector over the session's heap on the server; each
method is the ``gc`` function of the same name.  Objects are passed and returned as
:class:`heapd.Ref`; every ``Ref`` a method returns owns a new reference (release it, or
take it inside a ``with s.scope():`` block).
"""

__all__ = ["GC", "DEBUG_STATS", "DEBUG_COLLECTABLE", "DEBUG_UNCOLLECTABLE", "DEBUG_SAVEALL",
           "DEBUG_LEAK"]

import operator

from ._proto import heapd_pb2 as pb

# The debugging flags of gc.set_debug(), with the engine's values (heap.h HD_GC_DEBUG_*),
# which are CPython's.
DEBUG_STATS = 1
DEBUG_COLLECTABLE = 2
DEBUG_UNCOLLECTABLE = 4
DEBUG_SAVEALL = 32
DEBUG_LEAK = DEBUG_COLLECTABLE | DEBUG_UNCOLLECTABLE | DEBUG_SAVEALL


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


def _handles(refs):
    from ._session import _handle  # deferred: _session imports this module
    return [_handle(r) for r in refs]


class GC:
    """The ``gc`` module of one session (``s.gc``).

    Attributes:
        callbacks: a list of callables, as ``gc.callbacks``: each is called as
            ``callback(phase, info)`` around every collection of the heap, automatic or
            not, with ``phase`` ``"start"`` or ``"stop"`` and ``info`` a dict with
            ``generation``, ``collected``, ``uncollectable`` and ``pause`` (seconds the
            collection took; 0 at start).  They run during a call on the session
            (see :mod:`heapd`), in the thread that made it.
    """

    DEBUG_STATS = DEBUG_STATS
    DEBUG_COLLECTABLE = DEBUG_COLLECTABLE
    DEBUG_UNCOLLECTABLE = DEBUG_UNCOLLECTABLE
    DEBUG_SAVEALL = DEBUG_SAVEALL
    DEBUG_LEAK = DEBUG_LEAK

    def __init__(self, session):
        self._session = session
        self.callbacks = []

    def _call(self, op, msg=None):
        return self._session._call(op, msg)

    def collect(self, generation=2):
        """Collects generations 0..generation; returns the unreachable objects found."""
        return self._call("gc_collect", pb.GcCollect(generation=generation)).value

    def enable(self):
        """Turns automatic collection on."""
        self._call("gc_enable")

    def disable(self):
        """Turns automatic collection off (``collect()`` still works)."""
        self._call("gc_disable")

    def isenabled(self):
        """True if automatic collection is on."""
        return self._call("gc_isenabled").value

    def get_count(self):
        """The current collection counts, a tuple ``(count0, count1, count2)``."""
        return tuple(self._call("gc_get_count").count)

    def get_threshold(self):
        """The collection thresholds, a tuple; ``(700, 10, 10)`` by default."""
        return tuple(self._call("gc_get_threshold").threshold)

    def set_threshold(self, threshold0, threshold1=None, threshold2=None):
        """Sets the collection thresholds, as ``gc.set_threshold(t0[, t1[, t2]])``."""
        values = [_c_int(threshold0, "signed integer is greater than maximum")]
        for t in (threshold1, threshold2):
            if t is None:
                break
            values.append(_c_int(t, "signed integer is greater than maximum"))
        self._call("gc_set_threshold", pb.GcSetThreshold(threshold=values))

    def get_stats(self):
        """Per-generation statistics: a list of three dicts with ``collections``,
        ``collected`` and ``uncollectable``."""
        return [{"collections": g.collections, "collected": g.collected,
                 "uncollectable": g.uncollectable}
                for g in self._call("gc_get_stats").generations]

    def freeze(self):
        """Moves every tracked object into the permanent generation."""
        self._call("gc_freeze")

    def unfreeze(self):
        """Moves the permanent generation back into the oldest generation."""
        self._call("gc_unfreeze")

    def get_freeze_count(self):
        """The number of objects in the permanent generation."""
        return self._call("gc_get_freeze_count").value

    def is_tracked(self, ref):
        """True if the collector tracks the object (it has slots)."""
        return self._call("gc_is_tracked", pb.GcIsTracked(handle=_handles([ref])[0])).value

    def get_referrers(self, *refs):
        """The tracked objects with a slot pointing at any of ``refs``, as new Refs."""
        result = self._call("gc_get_referrers", pb.GcGetReferrers(handles=_handles(refs)))
        return [self._session._adopt(h) for h in result.handles]

    def get_referents(self, *refs):
        """The objects the slots of ``refs`` point at, as new Refs: every non-empty slot
        in order, duplicates kept, as ``gc.get_referents``."""
        result = self._call("gc_get_referents", pb.GcGetReferents(handles=_handles(refs)))
        return [self._session._adopt(h) for h in result.handles]

    def get_objects(self, generation=None, page_size=0):
        """Yields every object the collector tracks (in ``generation``, or all), as Refs.

        A generator: it fetches ``page_size`` objects at a time (0 = as many as fit in
        a response), so a heap of any size streams through in bounded memory.  Closing
        the generator early releases the server's cursor.
        """
        session = self._session
        msg = pb.GcGetObjects(max=page_size)
        if generation is not None:
            msg.generation = generation
        cursor = 0
        try:
            while True:
                msg.cursor = cursor
                result = self._call("gc_get_objects", msg)
                cursor = result.next_cursor
                # Wrap the whole page first: Refs not yet yielded when the generator is
                # closed are freed, and so released, with it.
                page = [session._adopt(h) for h in result.handles]
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

    def set_debug(self, flags):
        """Sets the debugging flags (``DEBUG_SAVEALL`` keeps collected cycles in
        :attr:`garbage` instead of freeing them)."""
        # Any C int, -1 included, as in CPython; the wire carries its 32 bits unsigned.
        flags = _c_int(flags, "Python int too large to convert to C int")
        self._call("gc_set_debug", pb.GcSetDebug(flags=flags & 0xFFFFFFFF))

    def get_debug(self):
        """The debugging flags."""
        value = self._call("gc_get_debug").value & 0xFFFFFFFF
        return value - 2**32 if value >= 2**31 else value

    @property
    def garbage(self):
        """The objects in the heap's ``gc.garbage`` list, as a list of new Refs.

        Uncollectable cycles (``legacy_finalizer`` objects) and, under
        ``DEBUG_SAVEALL``, every collected cycle land there.  This is a copy: use
        :meth:`clear_garbage` to empty the server's list.
        """
        refs = []
        while True:
            result = self._call("gc_garbage", pb.GcGarbage(start=len(refs)))
            refs.extend(self._session._adopt(h) for h in result.handles)
            if not result.handles or len(refs) >= result.total:
                return refs

    def clear_garbage(self):
        """Empties ``gc.garbage``, dropping its references (as ``gc.garbage.clear()``)."""
        self._call("gc_garbage_clear")
