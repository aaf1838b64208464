# SPDX-License-Identifier: MIT
"""Allocation tracing, shaped like Python's ``tracemalloc`` module, on the stdlib's own classes.

``s.tracemalloc`` traces the objects of the session's heap.  While tracing is on, each new
object is recorded with its *traceback*: ``s.tracemalloc.start(nframe)`` makes the client
send, with every allocation, up to ``nframe`` frames of the caller's stack (outside this
package; 1 by default, as in the stdlib), and the server keeps one traceback per site and
counts the traced objects by traceback, tag and size.

A snapshot is the stdlib's: :meth:`Tracemalloc.take_snapshot` takes one on the server, reads
its traces and frees it, and returns a :class:`Snapshot`, a subclass of
``tracemalloc.Snapshot`` holding them.  So ``snapshot.traces``, ``statistics('lineno' |
'filename' | 'traceback', cumulative)``, ``compare_to()``, ``filter_traces()`` with
``tracemalloc.Filter`` and ``DomainFilter``, ``dump()`` and ``Snapshot.load()`` are the
stdlib's code, with its results (``tracemalloc.Statistic``, ``StatisticDiff``, ``Traceback``,
``Frame``) and their formatting.  Documented extras: ``key_type='tag'`` groups by the
objects' tag (:class:`TagStatistic`, :class:`TagStatisticDiff`), and ``'site'`` is a synonym
of ``'traceback'``, since a site is a traceback.  Every trace is in domain 0 (Python's);
``total_nframe`` is not recorded (``None``).  Objects allocated without a site have the
traceback ``<unknown>:0``, as the stdlib's do.
"""

__all__ = ["Tracemalloc", "Snapshot", "TagStatistic", "TagStatisticDiff", "Statistic",
           "StatisticDiff", "Traceback", "Frame", "Filter", "DomainFilter", "format_site",
           "parse_site", "MAX_SITE_BYTES"]

import tracemalloc as _tm
from collections.abc import Iterable
from tracemalloc import DomainFilter, Filter, Frame, Statistic, StatisticDiff, Traceback

from ._ops import OPS

#: The longest site the server takes (HD_MAX_SITE_LEN): a traceback beyond it loses its
#: oldest frames.
MAX_SITE_BYTES = 4096

_UNKNOWN = (("<unknown>", 0),)

_SNAPSHOT = OPS["trace_snapshot"]
_TRACES = OPS["trace_snapshot_traces"]
_FREE = OPS["trace_snapshot_free"]
_OBJ_INFO = OPS["obj_info"]


def format_site(frames):
    """A traceback as the server keeps it: ``frames`` are ``(filename, lineno)`` pairs, most
    recent first; one ``filename:lineno`` line each, the oldest dropped beyond
    :data:`MAX_SITE_BYTES`.  (A newline in a file name would end its line: it is sent as
    ``\\n``.)"""
    lines = []
    size = -1
    for filename, lineno in frames:
        line = f"{filename.replace(chr(10), chr(92) + 'n')}:{lineno}"
        n = len(line.encode("utf-8", "surrogateescape")) + 1
        if size + n > MAX_SITE_BYTES:
            break
        lines.append(line)
        size += n
    if not lines:
        return clip_site(frames and f"{frames[0][0]}:{frames[0][1]}" or "")
    return "\n".join(lines)


def clip_site(site):
    """A site that fits :data:`MAX_SITE_BYTES`: its oldest lines dropped, and a single line too
    long for it cut at the start (its end, the file name and line, matters most)."""
    raw = site.encode("utf-8", "surrogateescape")
    if len(raw) <= MAX_SITE_BYTES:
        return site
    lines = site.split("\n")
    while len(lines) > 1 and len("\n".join(lines).encode("utf-8", "surrogateescape")) > \
            MAX_SITE_BYTES:
        lines.pop()
    text = lines[0] if len(lines) == 1 else "\n".join(lines)
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) <= MAX_SITE_BYTES:
        return text
    return "..." + raw[-(MAX_SITE_BYTES - 3):].decode("utf-8", "ignore")


_PARSED = {}


def parse_site(site):
    """The frames of a site, most recent first, as tracemalloc's raw traces have them: a
    tuple of ``(filename, lineno)``; a line that is no ``filename:lineno`` is a file name
    with line 0, and no site at all is ``(("<unknown>", 0),)``."""
    frames = _PARSED.get(site)
    if frames is not None:
        return frames
    if not site:
        frames = _UNKNOWN
    else:
        out = []
        for line in site.split("\n"):
            name, sep, lineno = line.rpartition(":")
            if sep and lineno.isdigit():
                out.append((name, int(lineno)))
            else:
                out.append((line, 0))
        frames = tuple(out)
    if len(_PARSED) > 65536:
        _PARSED.clear()
    _PARSED[site] = frames
    return frames


# ---------------------------------------------------------------------------------------
# Snapshots.
# ---------------------------------------------------------------------------------------


class TagStatistic:
    """Statistics of one tag (``statistics('tag')``, a heapd extra): ``tag``, ``size`` (bytes,
    as getsizeof), ``count`` (traced objects), formatted as the stdlib formats a Statistic."""

    __slots__ = ("tag", "size", "count")

    def __init__(self, tag, size, count):
        self.tag, self.size, self.count = tag, size, count

    def __str__(self):
        text = f"{self.tag or '<no tag>'}: size={_tm._format_size(self.size, False)}, " \
               f"count={self.count}"
        if self.count:
            text += f", average={_tm._format_size(self.size / self.count, False)}"
        return text

    def __repr__(self):
        return f"<TagStatistic tag={self.tag!r} size={self.size} count={self.count}>"

    def __eq__(self, other):
        if not isinstance(other, TagStatistic):
            return NotImplemented
        return (self.tag, self.size, self.count) == (other.tag, other.size, other.count)

    def __hash__(self):
        return hash((self.tag, self.size, self.count))

    def _sort_key(self):
        return (self.size, self.count, self.tag)


class TagStatisticDiff:
    """Growth of one tag between snapshots (``compare_to(old, 'tag')``): ``tag``, ``size``,
    ``size_diff``, ``count``, ``count_diff``, formatted as the stdlib's StatisticDiff."""

    __slots__ = ("tag", "size", "size_diff", "count", "count_diff")

    def __init__(self, tag, size, size_diff, count, count_diff):
        self.tag, self.size, self.size_diff = tag, size, size_diff
        self.count, self.count_diff = count, count_diff

    def __str__(self):
        text = (f"{self.tag or '<no tag>'}: size={_tm._format_size(self.size, False)} "
                f"({_tm._format_size(self.size_diff, True)}), "
                f"count={self.count} ({self.count_diff:+d})")
        if self.count:
            text += f", average={_tm._format_size(self.size / self.count, False)}"
        return text

    def __repr__(self):
        return (f"<TagStatisticDiff tag={self.tag!r} size={self.size} "
                f"size_diff={self.size_diff:+d} count={self.count} "
                f"count_diff={self.count_diff:+d}>")

    def __eq__(self, other):
        if not isinstance(other, TagStatisticDiff):
            return NotImplemented
        return ((self.tag, self.size, self.size_diff, self.count, self.count_diff) ==
                (other.tag, other.size, other.size_diff, other.count, other.count_diff))

    def __hash__(self):
        return hash((self.tag, self.size, self.size_diff, self.count, self.count_diff))

    def _sort_key(self):
        return (abs(self.size_diff), self.size, abs(self.count_diff), self.count, self.tag)


class Snapshot(_tm.Snapshot):
    """A snapshot of a heap's traced objects: ``tracemalloc.Snapshot`` itself, with each
    trace's tag kept beside it (see the module docstring).

    ``traces`` holds one ``tracemalloc.Trace`` per traced object (domain 0, its getsizeof
    bytes, its traceback); ``traceback_limit`` is the ``nframe`` tracing was started with.
    """

    def __init__(self, traces, traceback_limit, tags=None):
        super().__init__(traces, traceback_limit)
        self.tags = list(tags) if tags is not None else [""] * len(self.traces)

    def statistics(self, key_type, cumulative=False):
        """As ``tracemalloc.Snapshot.statistics``; also ``'tag'`` and ``'site'``."""
        if key_type == "tag":
            if cumulative:
                raise ValueError("cumulative mode cannot by used with key type 'tag'")
            stats = list(self._by_tag().values())
            stats.sort(reverse=True, key=TagStatistic._sort_key)
            return stats
        return super().statistics(_key(key_type), cumulative)

    def compare_to(self, old_snapshot, key_type, cumulative=False):
        """As ``tracemalloc.Snapshot.compare_to``; also ``'tag'`` and ``'site'``."""
        if key_type == "tag":
            if cumulative:
                raise ValueError("cumulative mode cannot by used with key type 'tag'")
            new, old = self._by_tag(), old_snapshot._by_tag()
            diffs = []
            for tag, s in new.items():
                o = old.pop(tag, None)
                if o is None:
                    diffs.append(TagStatisticDiff(tag, s.size, s.size, s.count, s.count))
                else:
                    diffs.append(TagStatisticDiff(tag, s.size, s.size - o.size, s.count,
                                                  s.count - o.count))
            for tag, o in old.items():
                diffs.append(TagStatisticDiff(tag, 0, -o.size, 0, -o.count))
            diffs.sort(reverse=True, key=TagStatisticDiff._sort_key)
            return diffs
        return super().compare_to(old_snapshot, _key(key_type), cumulative)

    def _by_tag(self):
        stats = {}
        for (_domain, size, _frames, _total), tag in zip(self.traces._traces, self.tags):
            stat = stats.get(tag)
            if stat is None:
                stats[tag] = TagStatistic(tag, size, 1)
            else:
                stat.size += size
                stat.count += 1
        return stats

    def _group_by(self, key_type, cumulative):
        if key_type == "tag":  # compare_to() of a stdlib snapshot against this one
            raise ValueError("unknown key_type: 'tag'")
        return super()._group_by(_key(key_type), cumulative)

    def filter_traces(self, filters):
        """As ``tracemalloc.Snapshot.filter_traces``: a new :class:`Snapshot` with the
        traces the filters keep, tags and all."""
        if not isinstance(filters, Iterable):
            raise TypeError("filters must be a list of filters, not %s"
                            % type(filters).__name__)
        traces = self.traces._traces
        if filters:
            include = [f for f in filters if f.inclusive]
            exclude = [f for f in filters if not f.inclusive]
            keep = [i for i, trace in enumerate(traces)
                    if self._filter_trace(include, exclude, trace)]
            return Snapshot([traces[i] for i in keep], self.traceback_limit,
                            [self.tags[i] for i in keep])
        return Snapshot(list(traces), self.traceback_limit, self.tags)


def _key(key_type):
    return "traceback" if key_type == "site" else key_type


# ---------------------------------------------------------------------------------------
# The module.
# ---------------------------------------------------------------------------------------


def _none(session, value):
    return None


def _pair(session, result):
    return result.current, result.peak


def _object_traceback(session, info):
    if not info.traced:
        return None
    return Traceback(parse_site(info.site))


class Tracemalloc:
    """The ``tracemalloc`` module of one session (``s.tracemalloc``).

    Its state (the ``nframe`` of :meth:`start`) belongs to the session: a pipeline's
    ``p.tracemalloc`` is the same module."""

    def __init__(self, owner):
        self._owner = owner  # the session, or a pipeline

    def _do(self, name, finish=_none, args=None):
        op = OPS[name]
        return self._owner._do(op, op.args() if args is None else args, finish)

    def start(self, nframe=1):
        """Starts tracing new objects (objects that already exist stay untraced), keeping
        up to ``nframe`` frames of each allocation's traceback, as
        ``tracemalloc.start(nframe)``."""
        if not isinstance(nframe, int) or isinstance(nframe, bool):
            raise TypeError(f"'{type(nframe).__name__}' object cannot be interpreted as an "
                            f"integer")
        if not 1 <= nframe <= 65535:
            raise ValueError("the number of frames must be in range [1; 65535]")
        root = self._owner._root
        root._trace_nframe = nframe
        return self._do("trace_start")

    def get_traceback_limit(self):
        """The ``nframe`` tracing keeps (``tracemalloc.get_traceback_limit()``): that of the
        last :meth:`start`, 1 before any."""
        return self._owner._root._trace_nframe

    def stop(self):
        """Stops tracing and forgets the traces, as ``tracemalloc.stop()``."""
        self._owner._root._trace_nframe = 1
        return self._do("trace_stop")

    def is_tracing(self):
        """True while tracing is on."""
        return self._do("trace_is_tracing", None)

    def clear_traces(self):
        """Forgets the traces of the objects traced so far; tracing goes on."""
        return self._do("trace_clear")

    def get_traced_memory(self):
        """``(current, peak)``: bytes of traced objects now, and the most since the
        start or the last :meth:`reset_peak`."""
        return self._do("trace_get_traced_memory", _pair)

    def reset_peak(self):
        """Sets the peak of :meth:`get_traced_memory` to the current size."""
        return self._do("trace_reset_peak")

    def get_tracemalloc_memory(self):
        """Bytes the server's tracing state holds (its table and its snapshots), as
        ``tracemalloc.get_tracemalloc_memory()``."""
        return self._do("trace_get_tracemalloc_memory", None)

    def get_object_traceback(self, ref):
        """The ``tracemalloc.Traceback`` where the object was allocated, or None if it was
        not traced, as ``tracemalloc.get_object_traceback(obj)``."""
        owner = self._owner
        return owner._do(_OBJ_INFO, _OBJ_INFO.args(owner._handle(ref)), _object_traceback)

    def take_snapshot(self):
        """A :class:`Snapshot` of the traced objects (a ``tracemalloc.Snapshot``);
        :class:`heapd.NotTracing` (a :class:`RuntimeError`, as tracemalloc raises) when
        tracing is off.  The server's snapshot is read in pages and freed."""
        return self._owner._drive(self._snapshot_steps())

    def _snapshot_steps(self):
        owner = self._owner
        (sid,) = yield [(_SNAPSHOT, _SNAPSHOT.args(), None)]
        raw = []
        tags = []
        freed = False
        try:
            start = 0
            while True:
                (page,) = yield [(_TRACES, _TRACES.args(snapshot=sid, start=start), None)]
                for site, tag, size, count in page.traces:
                    # One tuple per (site, tag, size), count times: the traces of objects
                    # alike are the same trace.
                    trace = (0, size, parse_site(site), None)
                    raw.extend([trace] * count)
                    tags.extend([tag] * count)
                start += len(page.traces)
                if start >= page.total or not page.traces:
                    break
            freed = True
            yield [(_FREE, _FREE.args(snapshot=sid), _none)]
        finally:
            if not freed:
                owner._defer("trace_snapshot_free", snapshot=sid)
        return Snapshot(raw, owner._root._trace_nframe, tags)
