# SPDX-License-Identifier: MIT
"""The protocol's operations and message shapes, read from the protobuf descriptor.

``proto/heapd.proto`` is the one source of the protocol: this module walks the descriptor
that ``protoc`` generated from it (``_proto/heapd_pb2.py``) once, at import, and derives
everything the client needs to speak it without the protobuf runtime on the hot path:

* :data:`OPS`: one :class:`Op` per field of ``Request.op``: its name, field number, the
  request message's field list (as a namedtuple class, :attr:`Op.args`, whose fields
  default to "absent") and the result it answers with, if any (the ``Response.result``
  field of the same number).
* :data:`SCHEMA`: the flat message table the codecs (``_pycodec.py`` and the C
  ``_speedups``) encode and decode with: every message reachable from a request, a result
  or an event, each a list of ``(number, type, repeated, presence, submessage, name)``
  field rows, with the namedtuple class a decoded message becomes.

A decoded message is a namedtuple of its fields in descriptor order, except a message with
exactly one field (``HandleResult``, ``ValueResult``, ``HandlesResult``, ...), which
decodes to that field's value.  Absent fields decode to their proto3 default, absent
fields with presence (``oneof`` members, singular messages) to ``None``.

Each op's properties come from its ``(opdef)`` option (``proto/heapd.proto``), the same
declaration the daemon's request table and the C client are generated from: which ops may
raise events, and so need a trailing ping when events are wanted (:attr:`Op.eventful`),
which need admin, which only read.
"""

import collections

try:
    from ._proto import heapd_pb2 as pb
except ImportError as exc:  # pragma: no cover - exercised by a test in a stripped interpreter
    if getattr(exc, "name", "") and exc.name.startswith("google"):
        raise ImportError(
            "heapd needs the protobuf module for Python: install Debian's python3-protobuf "
            "(apt-get install python3-protobuf)", name=exc.name) from exc
    raise

from google.protobuf.descriptor import FieldDescriptor as _FD

__all__ = ["OPS", "OPS_BY_NUMBER", "SCHEMA", "Op", "pb"]

# The field types a codec knows, as FieldDescriptor.TYPE_* numbers (the C codec uses the
# same numbers).
SUPPORTED_TYPES = frozenset({
    _FD.TYPE_DOUBLE, _FD.TYPE_FLOAT, _FD.TYPE_INT64, _FD.TYPE_UINT64, _FD.TYPE_INT32,
    _FD.TYPE_FIXED64, _FD.TYPE_FIXED32, _FD.TYPE_BOOL, _FD.TYPE_STRING, _FD.TYPE_MESSAGE,
    _FD.TYPE_BYTES, _FD.TYPE_UINT32, _FD.TYPE_ENUM, _FD.TYPE_SFIXED32, _FD.TYPE_SFIXED64,
    _FD.TYPE_SINT32, _FD.TYPE_SINT64,
})



class Schema:
    """The message table the codecs work from (see the module docstring).

    Attributes:
        messages: list of ``(cls, unwrap, fields, name)``; ``fields`` a tuple of
            ``(number, type, repeated, presence, sub, name)`` with ``sub`` the index of
            the field's message type in ``messages`` (-1 for scalars); ``cls`` the
            namedtuple class of a decoded message (None when ``unwrap``).
        requests: op field number -> index of the op's request message.
        results: Response result field number -> index of its message.
        events: Event field number -> index of its message.
    """

    def __init__(self):
        self.messages = []
        self.requests = {}
        self.results = {}
        self.events = {}
        self._index = {}

    def add(self, desc):
        """The index of message ``desc`` in the table, adding it (and what it nests)."""
        index = self._index.get(desc.full_name)
        if index is not None:
            return index
        index = len(self.messages)
        self._index[desc.full_name] = index
        self.messages.append(None)  # reserved: a message may nest itself (Batch -> Request)
        fields = []
        for f in desc.fields:
            if f.type not in SUPPORTED_TYPES:
                raise TypeError(f"{desc.full_name}.{f.name}: unsupported field type {f.type}")
            repeated = f.label == _FD.LABEL_REPEATED
            sub = self.add(f.message_type) if f.type == _FD.TYPE_MESSAGE else -1
            presence = not repeated and (f.containing_oneof is not None
                                         or f.type == _FD.TYPE_MESSAGE)
            fields.append((f.number, f.type, repeated, presence, sub, f.name))
        unwrap = len(fields) == 1
        cls = None if unwrap else _namedtuple(desc)
        if cls is not None:
            # For message_dict(): which fields are repeated, which are messages.
            cls._heapd_kinds = {f.name: (f.label == _FD.LABEL_REPEATED,
                                         f.type == _FD.TYPE_MESSAGE) for f in desc.fields}
        self.messages[index] = (cls, unwrap, tuple(fields), desc.name)
        return index

    def as_tuple(self):
        """What the C codec's constructor takes."""
        return (tuple(self.messages), dict(self.requests), dict(self.results), dict(self.events))


def _namedtuple(desc):
    """A namedtuple class for message ``desc``: its fields in order, each defaulting to
    None ("absent": the encoder leaves it out, the decoder never returns None for a field
    without presence)."""
    names = [f.name for f in desc.fields]
    cls = collections.namedtuple(desc.name, names, defaults=(None,) * len(names))
    cls.__module__ = "heapd.messages"
    cls.__doc__ = f"heapd.v1.{desc.name}: ({', '.join(names)})"
    return cls


class Op:
    """One protocol operation (a field of ``Request.op``), with the properties its
    ``(opdef)`` option declares in ``proto/heapd.proto``.

    Attributes:
        name: the field name, e.g. ``"alloc"``.
        number: its field number, which the result field shares.
        args: namedtuple class of the request message: ``op.args(size=16)``.
        result: True if a successful response carries a result (``Response.<name>``).
        resnum: the result field number of a success: ``number``, or 0 without a result.
        eventful: the op may raise events (it can free objects or run the collector):
            opdef ``events``.
        family: opdef ``family``, as its name (``"OBJECTS"``, ``"GC"``, ...).
        admin, readonly, unbatched, grows: the opdef flags of the same names.
    """

    __slots__ = ("name", "number", "args", "result", "resnum", "eventful", "message",
                 "family", "admin", "readonly", "unbatched", "grows")

    def __init__(self, field, result_field):
        opdef = field.GetOptions().Extensions[pb.opdef]
        if not opdef.family:
            raise TypeError(f"Request.{field.name} has no (opdef) family")
        self.name = field.name
        self.number = field.number
        self.message = field.message_type
        self.args = _namedtuple(field.message_type)
        self.result = result_field is not None
        self.resnum = self.number if self.result else 0  # the result field a success has
        self.eventful = opdef.events
        self.family = pb.OpDef.Family.Name(opdef.family)
        self.admin = opdef.admin
        self.readonly = opdef.readonly
        self.unbatched = opdef.unbatched
        self.grows = opdef.grows

    def __repr__(self):
        return f"<heapd op {self.name} ({self.number})>"


def _build():
    schema = Schema()
    request = pb.Request.DESCRIPTOR
    response = pb.Response.DESCRIPTOR
    results = response.oneofs_by_name["result"]
    result_by_number = {f.number: f for f in results.fields}
    ops = {}
    for field in request.oneofs_by_name["op"].fields:
        rfield = result_by_number.get(field.number)
        if rfield is not None and rfield.name != field.name:
            raise TypeError(f"Response.{rfield.name} has the number of Request.{field.name}")
        op = Op(field, rfield)
        ops[op.name] = op
        schema.requests[op.number] = schema.add(field.message_type)
        if rfield is not None:
            schema.results[rfield.number] = schema.add(rfield.message_type)
    for field in pb.Event.DESCRIPTOR.oneofs_by_name["kind"].fields:
        schema.events[field.number] = schema.add(field.message_type)
    return ops, schema


OPS, SCHEMA = _build()
OPS_BY_NUMBER = {op.number: op for op in OPS.values()}

#: The event kinds by field number of ``Event.kind`` (``1: "finalized"``, ...).
EVENT_NAMES = {f.number: f.name for f in pb.Event.DESCRIPTOR.oneofs_by_name["kind"].fields}
