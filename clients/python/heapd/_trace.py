"""Allocation tracing, shaped like Python's ``tracemalloc`` module.

``s.tracemalloc`` traces the objects of the session's heap: while tracing is on, each
new object is recorded with its allocation *site* (``file:line``, the caller of
:meth:`heapd.Session.alloc` by default) and *tag*.  Snapshots are taken and compared on
the server; the client gets the grouped statistics.  Where ``tracemalloc`` groups by
``'lineno'``, heapd groups by ``'site'`` (``'lineno'`` is accepted as a synonym) or by
``'tag'`` (the object's type name).
"""

__all__ = ["Tracemalloc", "Snapshot", "Statistic", "StatisticDiff"]

from ._ops import OPS, pb
from .errors import ReferenceReleased

_GROUPS = {"site": pb.BY_SITE, "lineno": pb.BY_SITE, "tag": pb.BY_TAG}
_STATISTICS = OPS["trace_statistics"]
_COMPARE = OPS["trace_compare"]
_SNAPSHOT_FREE = OPS["trace_snapshot_free"]


def _none(session, value):
    return None


def _stats(session, result):
    return [Statistic(s.key, s.bytes, s.count) for s in result.stats]


def _diffs(session, result):
    return [StatisticDiff(s.key, s.bytes, s.bytes_diff, s.count, s.count_diff)
            for s in result.stats]


def _pair(session, result):
    return result.current, result.peak


def _snapshot(session, snapshot_id):
    return Snapshot(session, snapshot_id)


def _group(key_type):
    try:
        return _GROUPS[key_type]
    except KeyError:
        raise ValueError(f"unknown key_type: {key_type!r} (use 'site' or 'tag')") from None


def _format_size(size, sign=False):
    """Formats a byte count as tracemalloc does: ``512 B``, ``1.5 KiB``, ``+20 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 100 and unit != "B":
            return f"{size:+.1f} {unit}" if sign else f"{size:.1f} {unit}"
        if abs(size) < 10 * 1024 or unit == "TiB":
            return f"{size:+.0f} {unit}" if sign else f"{size:.0f} {unit}"
        size /= 1024


class Statistic:
    """Statistics of one site or tag in a snapshot (``tracemalloc.Statistic``).

    Attributes: ``key`` (the site or tag; ``""`` for none), ``size`` (bytes, as
    getsizeof), ``count`` (live objects).
    """

    __slots__ = ("key", "size", "count")

    def __init__(self, key, size, count):
        self.key, self.size, self.count = key, size, count

    def __str__(self):
        text = f"{self.key or '<unknown>'}: size={_format_size(self.size)}, count={self.count}"
        if self.count:
            text += f", average={_format_size(self.size / self.count)}"
        return text

    def __repr__(self):
        return f"<Statistic key={self.key!r} size={self.size} count={self.count}>"

    def __eq__(self, other):
        if not isinstance(other, Statistic):
            return NotImplemented
        return (self.key, self.size, self.count) == (other.key, other.size, other.count)

    __hash__ = None


class StatisticDiff:
    """Growth of one site or tag between two snapshots (``tracemalloc.StatisticDiff``).

    Attributes: ``key``, ``size`` and ``count`` in the newer snapshot, and their
    changes ``size_diff`` and ``count_diff`` since the older one.
    """

    __slots__ = ("key", "size", "size_diff", "count", "count_diff")

    def __init__(self, key, size, size_diff, count, count_diff):
        self.key, self.size, self.size_diff = key, size, size_diff
        self.count, self.count_diff = count, count_diff

    def __str__(self):
        text = (f"{self.key or '<unknown>'}: size={_format_size(self.size)} "
                f"({_format_size(self.size_diff, sign=True)}), "
                f"count={self.count} ({self.count_diff:+d})")
        if self.count:
            text += f", average={_format_size(self.size / self.count)}"
        return text

    def __repr__(self):
        return (f"<StatisticDiff key={self.key!r} size={self.size} size_diff={self.size_diff:+d}"
                f" count={self.count} count_diff={self.count_diff:+d}>")

    def __eq__(self, other):
        if not isinstance(other, StatisticDiff):
            return NotImplemented
        return ((self.key, self.size, self.size_diff, self.count, self.count_diff)
                == (other.key, other.size, other.size_diff, other.count, other.count_diff))

    __hash__ = None


class Snapshot:
    """A snapshot of the traced objects, held on the server (``tracemalloc.Snapshot``).

    Close it (or use it as a context manager) to free it on the server; a snapshot
    that Python frees is released with the session's next request.
    """

    __slots__ = ("_session", "_id", "_closed")

    def __init__(self, session, snapshot_id):
        self._session = session
        self._id = snapshot_id
        self._closed = False

    @property
    def id(self):
        """The server's number for this snapshot."""
        return self._id

    def _live(self):
        if self._closed:
            raise ReferenceReleased(f"snapshot {self._id} is closed")
        return self._id

    def statistics(self, key_type="site", limit=0):
        """Statistics grouped by ``key_type`` (``'site'`` or ``'tag'``), largest first,
        as a list of :class:`Statistic` (at most ``limit``, 0 = all that fit in a
        response)."""
        args = _STATISTICS.args(snapshot=self._live(), group=_group(key_type), limit=limit)
        return self._session._do(_STATISTICS, args, _stats)

    def compare_to(self, old_snapshot, key_type="site", limit=0):
        """Growth since ``old_snapshot``, largest change first, as a list of
        :class:`StatisticDiff` (sites or tags that did not change are left out)."""
        args = _COMPARE.args(snapshot=self._live(), old_snapshot=old_snapshot._live(),
                             group=_group(key_type), limit=limit)
        return self._session._do(_COMPARE, args, _diffs)

    def close(self):
        """Frees the snapshot on the server now.  Closing twice, or after the session was
        closed, does nothing."""
        session = self._session
        if self._closed or session.closed:
            self._closed = True
            return session._done(None)
        self._closed = True
        return session._do(_SNAPSHOT_FREE, _SNAPSHOT_FREE.args(snapshot=self._id), _none)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def __del__(self):
        if not self._closed:
            self._closed = True
            self._session._defer("trace_snapshot_free", snapshot=self._id)

    def __repr__(self):
        return f"<heapd.Snapshot {self._id}{' closed' if self._closed else ''}>"


class Tracemalloc:
    """The ``tracemalloc`` module of one session (``s.tracemalloc``)."""

    def __init__(self, session):
        self._session = session
        self._nframe = 1

    def _do(self, name, finish=_none):
        op = OPS[name]
        return self._session._do(op, op.args(), finish)

    def start(self, nframe=1):
        """Starts tracing new objects (objects that already exist stay untraced), keeping
        up to ``nframe`` frames of each allocation's traceback, as
        ``tracemalloc.start(nframe)``."""
        if not isinstance(nframe, int) or isinstance(nframe, bool):
            raise TypeError(f"an integer is required, not {type(nframe).__name__}")
        if not 1 <= nframe <= 65535:
            raise ValueError("the number of frames must be in range [1; 65535]")
        self._nframe = nframe
        return self._do("trace_start")

    def get_traceback_limit(self):
        """The ``nframe`` of the last :meth:`start` (1 before any)."""
        return self._nframe

    def stop(self):
        """Stops tracing and forgets the traces, as ``tracemalloc.stop()``."""
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

    def take_snapshot(self):
        """A :class:`Snapshot` of the live traced objects; :class:`heapd.NotTracing` (a
        :class:`RuntimeError`, as tracemalloc raises) when tracing is off."""
        return self._do("trace_snapshot", _snapshot)
