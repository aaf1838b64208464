# SPDX-License-Identifier: MIT
"""The wire codec in pure Python: frames in and out, without the protobuf runtime.

This is the fallback of the C codec (``_speedups.c``) and does exactly what it does, with
the same interface, so that the client runs (and its tests pass) on either; ``heapd.
implementation`` says which one is in use.  Both work from the message table of
``_ops.SCHEMA`` (read from the descriptor), encode the protobuf wire format by hand and
decode it strictly:

* ``Codec(schema).encode(rid, opnum, args)`` gives one whole frame (length prefix, then
  ``ClientFrame { request { id: rid, <op opnum>: args } }``); ``encode_many`` the frames
  of an iterable of ``(rid, opnum, args)`` in one ``bytes``.  ``args`` is a tuple (the
  op's namedtuple) of the request message's fields in descriptor order, ``None`` for
  absent.  A value of the wrong type raises ``TypeError``, one out of its field's range
  ``OverflowError``.
* ``Codec.reader(max_frame)`` gives a :class:`Reader`: ``feed(data)`` it the bytes read
  from the socket and call ``gets()`` until it returns ``None``.  Each frame comes out as
  ``(1, id, code, name, message, result_number, result, moved_to)`` for a response
  (result ``None`` and result_number 0 when it carries none; moved_to the status's
  redirect URL, ``""`` but for EMOVED), ``(2, kind, event)`` for an event,
  or ``(0, kind)`` for a frame kind this client does not know.  Anything malformed (a
  length of 0 or over ``max_frame``, a bad varint, a field of the wrong wire type, a
  truncated field, invalid UTF-8, a value out of its field's range, a response without
  status or with two results) raises ``ValueError``: the stream cannot be trusted after.
"""

import struct

__all__ = ["Codec", "Reader"]

# FieldDescriptor.TYPE_* numbers.
_DOUBLE, _FLOAT, _INT64, _UINT64, _INT32, _FIXED64, _FIXED32, _BOOL, _STRING = range(1, 10)
_MESSAGE, _BYTES, _UINT32, _ENUM, _SFIXED32, _SFIXED64, _SINT32, _SINT64 = range(11, 19)

_VARINT_TYPES = frozenset({_INT64, _UINT64, _INT32, _BOOL, _UINT32, _ENUM, _SINT32, _SINT64})
_I64_TYPES = frozenset({_DOUBLE, _FIXED64, _SFIXED64})
_I32_TYPES = frozenset({_FLOAT, _FIXED32, _SFIXED32})
_LEN_TYPES = frozenset({_STRING, _BYTES, _MESSAGE})

# The wire type each field type travels as (packed repeated scalars travel as 2).
_WIRE = {t: 0 for t in _VARINT_TYPES}
_WIRE.update({t: 1 for t in _I64_TYPES})
_WIRE.update({t: 5 for t in _I32_TYPES})
_WIRE.update({t: 2 for t in _LEN_TYPES})

# Integer ranges: (low, high) for encoding and for checking decoded values.
_RANGE = {
    _INT32: (-(1 << 31), (1 << 31) - 1), _ENUM: (-(1 << 31), (1 << 31) - 1),
    _SINT32: (-(1 << 31), (1 << 31) - 1), _SFIXED32: (-(1 << 31), (1 << 31) - 1),
    _INT64: (-(1 << 63), (1 << 63) - 1), _SINT64: (-(1 << 63), (1 << 63) - 1),
    _SFIXED64: (-(1 << 63), (1 << 63) - 1),
    _UINT32: (0, (1 << 32) - 1), _FIXED32: (0, (1 << 32) - 1),
    _UINT64: (0, (1 << 64) - 1), _FIXED64: (0, (1 << 64) - 1), _BOOL: (0, 1),
}
_TYPE_NAMES = {_DOUBLE: "double", _FLOAT: "float", _INT64: "int64", _UINT64: "uint64",
               _INT32: "int32", _FIXED64: "fixed64", _FIXED32: "fixed32", _BOOL: "bool",
               _STRING: "string", _MESSAGE: "message", _BYTES: "bytes", _UINT32: "uint32",
               _ENUM: "enum", _SFIXED32: "sfixed32", _SFIXED64: "sfixed64",
               _SINT32: "sint32", _SINT64: "sint64"}

_DEFAULTS = {t: 0 for t in _VARINT_TYPES | _I64_TYPES | _I32_TYPES}
_DEFAULTS.update({_BOOL: False, _DOUBLE: 0.0, _FLOAT: 0.0, _STRING: "", _BYTES: b""})

_LEN = struct.Struct(">I")
_F64 = struct.Struct("<Q")
_F32 = struct.Struct("<I")
_D64 = struct.Struct("<d")
_D32 = struct.Struct("<f")

#: What a frame may hold before the hello has given the real limit.
DEFAULT_MAX_FRAME = 1 << 20


# ---------------------------------------------------------------------------------------
# Encoding.
# ---------------------------------------------------------------------------------------


def _varint(out, v):
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _varint_bytes(v):
    out = bytearray()
    _varint(out, v)
    return out


class Codec:
    """Encodes requests and makes readers, from the message table of ``_ops.SCHEMA``."""

    implementation = "python"

    def __init__(self, schema):
        messages, requests, results, events = schema
        self._messages = messages
        self._requests = requests
        self._results = results
        self._events = events
        # Per message: field number -> (index, type, repeated, presence, sub, name).
        self._by_number = [
            {f[0]: (i,) + tuple(f[1:]) for i, f in enumerate(fields)}
            for (_cls, _unwrap, fields, _name) in messages
        ]

    # -- requests ------------------------------------------------------------------------

    def encode(self, rid, opnum, args):
        """One frame: the length prefix and ClientFrame{request{id, op}}."""
        out = bytearray()
        self._frame(out, rid, opnum, args)
        return bytes(out)

    def encode_many(self, requests):
        """The frames of ``requests`` (an iterable of ``(rid, opnum, args)``), joined."""
        out = bytearray()
        for rid, opnum, args in requests:
            self._frame(out, rid, opnum, args)
        return bytes(out)

    def _frame(self, out, rid, opnum, args):
        mi = self._requests.get(opnum)
        if mi is None:
            raise ValueError(f"unknown op number {opnum}")
        if not isinstance(rid, int) or not 0 <= rid < 1 << 64:
            raise OverflowError(f"request id {rid!r} out of range")
        body = self._message(mi, args)
        req = bytearray()
        if rid:  # proto3 leaves a 0 out
            req.append(0x08)
            _varint(req, rid)
        _varint(req, (opnum << 3) | 2)
        _varint(req, len(body))
        req += body
        frame = bytearray(b"\x0a")
        _varint(frame, len(req))
        out += _LEN.pack(len(frame) + len(req))
        out += frame
        out += req

    def _message(self, mi, values):
        _cls, _unwrap, fields, name = self._messages[mi]
        if not isinstance(values, tuple):
            raise TypeError(f"{name}: expected a tuple of fields, not {type(values).__name__}")
        if len(values) != len(fields):
            raise TypeError(f"{name}: {len(values)} values for {len(fields)} fields")
        out = bytearray()
        for (number, ftype, repeated, presence, sub, fname), value in zip(fields, values):
            if value is None:
                continue
            if repeated:
                if isinstance(value, (str, bytes, bytearray)):
                    raise TypeError(f"{name}.{fname}: expected a sequence, not "
                                    f"{type(value).__name__}")
                items = list(value)
                if not items:
                    continue
                if ftype in _LEN_TYPES:
                    for item in items:
                        self._field(out, number, ftype, sub, item, name, fname)
                else:
                    packed = bytearray()
                    for item in items:
                        self._scalar(packed, ftype, item, name, fname)
                    _varint(out, (number << 3) | 2)
                    _varint(out, len(packed))
                    out += packed
                continue
            if not presence and ftype != _MESSAGE and _is_default(ftype, value):
                continue
            self._field(out, number, ftype, sub, value, name, fname)
        return out

    def _field(self, out, number, ftype, sub, value, mname, fname):
        _varint(out, (number << 3) | _WIRE[ftype])
        if ftype == _STRING:
            if isinstance(value, str):
                raw = value.encode("utf-8")
            elif isinstance(value, (bytes, bytearray)):
                raw = bytes(value)
                raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
            else:
                raise TypeError(f"{mname}.{fname}: expected str, not {type(value).__name__}")
            _varint(out, len(raw))
            out += raw
        elif ftype == _BYTES:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise TypeError(f"{mname}.{fname}: expected bytes, not {type(value).__name__}")
            raw = bytes(value)
            _varint(out, len(raw))
            out += raw
        elif ftype == _MESSAGE:
            if isinstance(value, (bytes, bytearray)):
                raw = value  # already encoded
            else:
                raw = self._message(sub, value)
            _varint(out, len(raw))
            out += raw
        else:
            self._scalar(out, ftype, value, mname, fname)

    @staticmethod
    def _scalar(out, ftype, value, mname, fname):
        if ftype in (_DOUBLE, _FLOAT):
            if not isinstance(value, (int, float)):
                raise TypeError(f"{mname}.{fname}: expected float, not {type(value).__name__}")
            out += (_D64 if ftype == _DOUBLE else _D32).pack(value)
            return
        if not isinstance(value, int):
            raise TypeError(f"{mname}.{fname}: expected int, not {type(value).__name__}")
        low, high = _RANGE[ftype]
        if not low <= value <= high:
            raise OverflowError(f"{mname}.{fname}: {value} out of range for "
                                f"{_TYPE_NAMES[ftype]}")
        if ftype in (_SINT32, _SINT64):
            _varint(out, (value << 1) ^ (value >> 63) if value < 0 else value << 1)
        elif ftype in (_FIXED64, _SFIXED64):
            out += _F64.pack(value & 0xFFFFFFFFFFFFFFFF)
        elif ftype in (_FIXED32, _SFIXED32):
            out += _F32.pack(value & 0xFFFFFFFF)
        else:
            _varint(out, value & 0xFFFFFFFFFFFFFFFF)

    def reader(self, max_frame=DEFAULT_MAX_FRAME):
        """A new :class:`Reader` refusing frames over ``max_frame`` bytes."""
        return Reader(self, max_frame)


def _is_default(ftype, value):
    """True if ``value`` is the proto3 default of ``ftype`` (left out of the encoding); a
    value of the wrong type is never a default, so that encoding it raises."""
    if ftype == _STRING:
        return isinstance(value, (str, bytes, bytearray)) and len(value) == 0
    if ftype == _BYTES:
        return isinstance(value, (bytes, bytearray)) and len(value) == 0
    if ftype in (_DOUBLE, _FLOAT):
        return isinstance(value, (int, float)) and value == 0
    return isinstance(value, int) and value == 0


# ---------------------------------------------------------------------------------------
# Decoding.
# ---------------------------------------------------------------------------------------


class Reader:
    """Cuts the byte stream from the server into frames and decodes them (see the module
    docstring)."""

    def __init__(self, codec, max_frame=DEFAULT_MAX_FRAME):
        self._codec = codec
        self._buf = bytearray()
        self._pos = 0
        self.max_frame = max_frame

    @property
    def pending(self):
        """Bytes received and not yet returned as frames."""
        return len(self._buf) - self._pos

    def feed(self, data):
        """Adds bytes read from the socket."""
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def gets(self):
        """The next whole frame, decoded; ``None`` until one has arrived."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        (n,) = _LEN.unpack_from(buf, pos)
        if n == 0:
            raise ValueError("frame of length 0")
        if n > self.max_frame:
            raise ValueError(f"frame of {n} bytes (limit {self.max_frame})")
        end = pos + 4 + n
        if len(buf) < end:
            return None
        frame = bytes(buf[pos + 4:end])
        self._pos = end
        if end == len(buf):
            buf.clear()
            self._pos = 0
        return self._server_frame(frame)

    # -- the envelope --------------------------------------------------------------------

    def _server_frame(self, data):
        kind = None
        other = 0
        for number, wire, start, end in _fields(data, 0, len(data)):
            if number in (1, 2):
                if wire != 2:
                    raise ValueError(f"ServerFrame field {number} has wire type {wire}")
                kind = (number, start, end)
            else:
                other = number
        if kind is None:
            return (0, other)
        number, start, end = kind
        if number == 1:
            return self._response(data, start, end)
        return self._event(data, start, end)

    def _response(self, data, start, end):
        rid = 0
        status = None
        resnum = 0
        result = None
        for number, wire, fstart, fend in _fields(data, start, end):
            if number == 1:
                if wire != 0:
                    raise ValueError("Response.id is not a varint")
                rid = fstart  # _fields gives a varint's value as its start
            elif number == 2:
                if wire != 2:
                    raise ValueError("Response.status is not a message")
                status = (fstart, fend)
            elif wire == 2:
                # Every result is a message; an unknown one answers an op this client
                # never sends, and so fails the check against the request.
                if resnum:
                    raise ValueError(f"response with two results ({resnum} and {number})")
                resnum = number
                result = (fstart, fend)
            # Other fields are from a newer protocol: skipped.
        if status is None:
            raise ValueError("response without a status")
        code, name, message, moved_to = _status(data, *status)
        if resnum:
            mi = self._codec._results.get(resnum)
            if mi is None:
                result = bytes(data[result[0]:result[1]])
            else:
                result = self._message(mi, data, *result)
        return (1, rid, code, name, message, resnum, result, moved_to)

    def _event(self, data, start, end):
        kind = 0
        span = None
        for number, wire, fstart, fend in _fields(data, start, end):
            if wire != 2:
                raise ValueError(f"Event field {number} has wire type {wire}")
            kind, span = number, (fstart, fend)
        if not kind:
            return (2, 0, None)
        mi = self._codec._events.get(kind)
        if mi is None:
            return (2, kind, bytes(data[span[0]:span[1]]))
        return (2, kind, self._message(mi, data, *span))

    # -- messages ------------------------------------------------------------------------

    def _message(self, mi, data, start, end, depth=0):
        if depth > 32:
            raise ValueError("messages nested too deep")
        cls, unwrap, fields, name = self._codec._messages[mi]
        by_number = self._codec._by_number[mi]
        values = [None] * len(fields)
        for number, wire, fstart, fend in _fields(data, start, end):
            spec = by_number.get(number)
            if spec is None:
                continue  # a field from a newer protocol
            index, ftype, repeated, _presence, sub, fname = spec
            if repeated and wire == 2 and ftype not in _LEN_TYPES:
                items = values[index]
                if items is None:
                    items = values[index] = []
                _unpack_packed(data, fstart, fend, ftype, items, name, fname)
                continue
            if wire != _WIRE[ftype]:
                raise ValueError(f"{name}.{fname}: wire type {wire} for a "
                                 f"{_TYPE_NAMES[ftype]}")
            if ftype == _MESSAGE:
                value = self._message(sub, data, fstart, fend, depth + 1)
            else:
                value = _scalar_value(data, wire, fstart, fend, ftype, name, fname)
            if repeated:
                items = values[index]
                if items is None:
                    items = values[index] = []
                items.append(value)
            else:
                values[index] = value
        for i, (_n, ftype, repeated, presence, _s, _f) in enumerate(fields):
            if values[i] is None:
                if repeated:
                    values[i] = []
                elif not presence:
                    values[i] = _DEFAULTS[ftype]
        if unwrap:
            return values[0]
        return tuple.__new__(cls, values)


def _fields(data, pos, end):
    """Yields ``(number, wire, start, end)`` for each field of the message in
    ``data[pos:end]``; for a varint, ``start`` is its value and ``end`` 0."""
    while pos < end:
        key, pos = _read_varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0 or number > 0x1FFFFFFF:
            raise ValueError(f"bad field number {number}")
        if wire == 0:
            value, pos = _read_varint(data, pos, end)
            yield number, 0, value, 0
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError("truncated 64-bit field")
            yield number, 1, pos, pos + 8
            pos += 8
        elif wire == 2:
            n, pos = _read_varint(data, pos, end)
            if n > end - pos:
                raise ValueError("truncated length-delimited field")
            yield number, 2, pos, pos + n
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise ValueError("truncated 32-bit field")
            yield number, 5, pos, pos + 4
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _read_varint(data, pos, end):
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        if shift == 63 and b > 1:
            raise ValueError("varint over 64 bits")
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint over 10 bytes")


def _scalar_value(data, wire, start, end, ftype, mname, fname):
    """The value of one non-message field (for a varint, ``start`` is the raw value)."""
    if wire == 0:
        raw = start
        if ftype in (_SINT32, _SINT64):
            value = (raw >> 1) ^ -(raw & 1)
        elif ftype in (_INT32, _INT64, _ENUM):
            value = raw - (1 << 64) if raw >> 63 else raw
        else:
            value = raw
        if ftype == _BOOL:
            return value != 0
        low, high = _RANGE[ftype]
        if not low <= value <= high:
            raise ValueError(f"{mname}.{fname}: {value} out of range for {_TYPE_NAMES[ftype]}")
        return value
    if wire == 1:
        if ftype == _DOUBLE:
            return _D64.unpack_from(data, start)[0]
        (value,) = _F64.unpack_from(data, start)
        if ftype == _SFIXED64 and value >> 63:
            value -= 1 << 64
        return value
    if wire == 5:
        if ftype == _FLOAT:
            return _D32.unpack_from(data, start)[0]
        (value,) = _F32.unpack_from(data, start)
        if ftype == _SFIXED32 and value >> 31:
            value -= 1 << 32
        return value
    raw = bytes(data[start:end])
    if ftype == _STRING:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{mname}.{fname}: invalid UTF-8") from None
    return raw


def _unpack_packed(data, pos, end, ftype, items, mname, fname):
    wire = _WIRE[ftype]
    while pos < end:
        if wire == 0:
            raw, pos = _read_varint(data, pos, end)
            items.append(_scalar_value(data, 0, raw, 0, ftype, mname, fname))
        else:
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise ValueError(f"{mname}.{fname}: truncated packed field")
            items.append(_scalar_value(data, wire, pos, pos + width, ftype, mname, fname))
            pos += width


def _status(data, start, end):
    code, name, message, moved_to = 0, "", "", ""
    for number, wire, fstart, fend in _fields(data, start, end):
        if number == 1:
            if wire != 0:
                raise ValueError("Status.code is not a varint")
            code = _scalar_value(data, 0, fstart, 0, _INT32, "Status", "code")
        elif number in (2, 3, 4):
            if wire != 2:
                raise ValueError(f"Status field {number} is not a string")
            text = _scalar_value(data, 2, fstart, fend, _STRING, "Status", "name")
            if number == 2:
                name = text
            elif number == 3:
                message = text
            else:
                moved_to = text
    return code, name, message, moved_to
