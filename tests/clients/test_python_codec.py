#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The Python client's two wire codecs against each other and against protobuf itself.

heapd._speedups (C) and heapd._pycodec (pure Python) must behave alike, byte for byte and
error for error, and both must agree with the protobuf runtime on the wire format.  No
daemon is needed:

* every op's request, with random field values, encodes to exactly what protobuf
  serializes for the same ClientFrame;
* random responses for every op with a result, and random events, built and serialized
  with protobuf, decode to the same values with both codecs, whole or fed a byte at a time;
* mutated frames (bytes flipped, inserted, cut) give the same result or the same error
  (ValueError) from both: the decoder is a parser of untrusted input and is fuzzed here,
  under ASan in the sanitizer build;
* values of the wrong type or out of range are refused alike (TypeError, OverflowError).

Run: PYTHONPATH=<build>/clients/python /usr/bin/python3 test_python_codec.py [--require-c]
         [--ops-def <build>/proto/heapd_ops.def] [--speedups PATH-TO-A-CHECKED-_speedups.so]
"""

import os
import random
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyasan  # noqa: E402,F401  (re-executes under the sanitizer runtime when needed)

from google.protobuf.descriptor import FieldDescriptor as FD  # noqa: E402

from heapd import _ops, _pycodec  # noqa: E402
from heapd._ops import OPS, pb  # noqa: E402

try:
    from heapd import _speedups
except ImportError:
    _speedups = None


def load_speedups(path):
    """The C codec from ``path``: the sanitizer build's checked twin of heapd._speedups."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_speedups", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

REQUIRE_C = False
OPS_DEF = None
SEED = int(os.environ.get("HEAPD_TEST_SEED", "20261201"))

SCHEMA = _ops.SCHEMA.as_tuple()

_RANGES = {
    FD.TYPE_INT32: (-(1 << 31), (1 << 31) - 1), FD.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    FD.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1), FD.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FD.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1), FD.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    FD.TYPE_UINT32: (0, (1 << 32) - 1), FD.TYPE_FIXED32: (0, (1 << 32) - 1),
    FD.TYPE_UINT64: (0, (1 << 64) - 1), FD.TYPE_FIXED64: (0, (1 << 64) - 1),
}


def random_scalar(rng, field):
    t = field.type
    if t == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FD.TYPE_STRING:
        return "".join(rng.choice("aZ09_:/.é€\U0001F600") for _ in range(rng.randrange(0, 12)))
    if t == FD.TYPE_BYTES:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
    if t == FD.TYPE_ENUM:
        return rng.choice(field.enum_type.values).number
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return float(rng.randrange(-1000, 1000)) / 4
    low, high = _RANGES[t]
    pick = rng.random()
    if pick < 0.25:
        return 0
    if pick < 0.4:
        return rng.choice((low, high))
    if pick < 0.7:
        return rng.randrange(max(low, -300), min(high, 300) + 1)
    return rng.randrange(low, high + 1)


def random_message(rng, desc, depth=0):
    """A random (protobuf message, heapd namedtuple-or-value) pair for message ``desc``."""
    msg = getattr(pb, desc.name)()
    values = {}
    oneofs_done = set()
    for field in desc.fields:
        if field.containing_oneof is not None:
            if field.containing_oneof.name in oneofs_done or rng.random() < 0.5:
                values[field.name] = None
                continue
            oneofs_done.add(field.containing_oneof.name)
        if field.label == FD.LABEL_REPEATED:
            n = rng.randrange(0, 4)
            if field.type == FD.TYPE_MESSAGE:
                items = [random_message(rng, field.message_type, depth + 1) for _ in range(n)]
                for m, _ in items:
                    getattr(msg, field.name).add().CopyFrom(m)
                values[field.name] = [v for _, v in items]
            else:
                items = [random_scalar(rng, field) for _ in range(n)]
                getattr(msg, field.name).extend(items)
                values[field.name] = items
        elif field.type == FD.TYPE_MESSAGE:
            if depth > 2 or rng.random() < 0.3:
                values[field.name] = None
                continue
            m, v = random_message(rng, field.message_type, depth + 1)
            getattr(msg, field.name).CopyFrom(m)
            values[field.name] = v
        else:
            v = random_scalar(rng, field)
            setattr(msg, field.name, v)
            values[field.name] = v
    return msg, values


def expected(desc, values):
    """What a codec decodes ``values`` (as random_message made them) to."""
    cls = None
    out = []
    for field in desc.fields:
        v = values.get(field.name)
        if field.label == FD.LABEL_REPEATED:
            if field.type == FD.TYPE_MESSAGE:
                v = [expected(field.message_type, x) for x in (v or [])]
            else:
                v = list(v or [])
        elif field.type == FD.TYPE_MESSAGE:
            v = None if v is None else expected(field.message_type, v)
        elif v is None:
            if field.containing_oneof is None:
                v = {FD.TYPE_STRING: "", FD.TYPE_BYTES: b"", FD.TYPE_BOOL: False,
                     FD.TYPE_DOUBLE: 0.0, FD.TYPE_FLOAT: 0.0}.get(field.type, 0)
        out.append(v)
    if len(out) == 1:
        return out[0]
    for messages_row in SCHEMA[0]:
        if messages_row[3] == desc.name and messages_row[0] is not None:
            cls = messages_row[0]
    return cls(*out)


def as_args(op, desc, values):
    """The namedtuple a client passes to encode, from random_message's values."""
    def conv(d, vals):
        out = []
        for field in d.fields:
            v = vals.get(field.name)
            if field.type == FD.TYPE_MESSAGE and v is not None:
                if field.label == FD.LABEL_REPEATED:
                    v = [conv(field.message_type, x) for x in v]
                else:
                    v = conv(field.message_type, v)
            out.append(v)
        return tuple(out)
    return op.args(*conv(desc, values))


def frame(payload):
    return len(payload).to_bytes(4, "big") + payload


class CodecCase(unittest.TestCase):
    def setUp(self):
        self.codecs = {"python": _pycodec.Codec(SCHEMA)}
        if _speedups is not None:
            self.codecs["c"] = _speedups.Codec(SCHEMA)
        elif REQUIRE_C:
            self.fail("heapd._speedups was not built")


class EncodeTest(CodecCase):
    def test_every_op_matches_protobuf(self):
        rng = random.Random(SEED)
        for op in OPS.values():
            if op.name == "batch":
                continue  # nested requests: see test_batch
            for _ in range(30):
                msg, values = random_message(rng, op.message)
                rid = rng.choice((0, 1, rng.randrange(1 << 64)))
                req = pb.Request(id=rid)
                getattr(req, op.name).CopyFrom(msg)
                want = frame(pb.ClientFrame(request=req).SerializeToString())
                args = as_args(op, op.message, values)
                for name, codec in self.codecs.items():
                    self.assertEqual(codec.encode(rid, op.number, args), want,
                                     f"{name} {op.name} {args}")

    def test_encode_many_is_the_frames_joined(self):
        alloc = OPS["alloc"]
        calls = [(i, alloc.number, alloc.args(size=i, tag="t" * (i % 5))) for i in range(50)]
        for codec in self.codecs.values():
            self.assertEqual(codec.encode_many(calls),
                             b"".join(codec.encode(*c) for c in calls))
            self.assertEqual(codec.encode_many([]), b"")

    def test_batch(self):
        batch, ping, alloc = OPS["batch"], OPS["ping"], OPS["alloc"]
        inner = [pb.Request(id=7, ping=pb.Ping()), pb.Request(id=8, alloc=pb.Alloc(size=3))]
        want = frame(pb.ClientFrame(request=pb.Request(id=9, batch=pb.Batch(ops=inner)))
                     .SerializeToString())
        request_cls = SCHEMA[0][SCHEMA[1][batch.number]][2][0][4]  # Batch.ops -> Request
        fields = [f.name for f in pb.Request.DESCRIPTOR.fields]
        req_tuple = SCHEMA[0][request_cls][0]
        ops = [req_tuple(**{"id": 7, "ping": ping.args()}),
               req_tuple(**{"id": 8, "alloc": alloc.args(size=3)})]
        self.assertIn("ping", fields)
        for codec in self.codecs.values():
            self.assertEqual(codec.encode(9, batch.number, batch.args(ops=ops)), want)

    def test_presence(self):
        # gc_collect's generation is in a oneof: 0 is sent, None is not.
        op = OPS["gc_collect"]
        for codec in self.codecs.values():
            self.assertEqual(codec.encode(1, op.number, op.args(generation=0)),
                             frame(pb.ClientFrame(request=pb.Request(
                                 id=1, gc_collect=pb.GcCollect(generation=0)))
                                 .SerializeToString()))
            self.assertEqual(codec.encode(1, op.number, op.args()),
                             frame(pb.ClientFrame(request=pb.Request(
                                 id=1, gc_collect=pb.GcCollect())).SerializeToString()))

    def test_bad_values(self):
        alloc, decref = OPS["alloc"], OPS["decref"]
        cases = [
            (alloc, alloc.args(size=-1), OverflowError),
            (alloc, alloc.args(size=1 << 32), OverflowError),
            (alloc, alloc.args(size=1.5), TypeError),
            (alloc, alloc.args(size="1"), TypeError),
            (alloc, alloc.args(tag=5), TypeError),
            (alloc, alloc.args(tag=b"\xff"), ValueError),
            (alloc, alloc.args(data="text"), TypeError),
            (alloc, alloc.args(data=5), TypeError),
            (alloc, (1, 2), TypeError),
            (alloc, [0] * 6, TypeError),
            (decref, decref.args(handle=1 << 64), OverflowError),
            (decref, decref.args(handle=-1), OverflowError),
            (OPS["gc_set_threshold"], OPS["gc_set_threshold"].args(threshold=5), TypeError),
            (OPS["gc_set_threshold"], OPS["gc_set_threshold"].args(threshold="ab"), TypeError),
            (OPS["gc_set_threshold"], OPS["gc_set_threshold"].args(threshold=[1 << 31]),
             OverflowError),
        ]
        for op, args, exc in cases:
            for name, codec in self.codecs.items():
                with self.assertRaises(exc, msg=f"{name} {args}"):
                    codec.encode(1, op.number, args)
        for codec in self.codecs.values():
            with self.assertRaises(ValueError):
                codec.encode(1, 2, ())  # 2 is no op
            with self.assertRaises(OverflowError):
                codec.encode(-1, OPS["ping"].number, OPS["ping"].args())
            # Zeros and empty values are left out, but must still be of the right type.
            with self.assertRaises(TypeError):
                codec.encode(1, alloc.number, alloc.args(data=""))
            self.assertEqual(codec.encode(1, alloc.number, alloc.args(tag=b"", data=b"")),
                             codec.encode(1, alloc.number, alloc.args()))


def response_frame(rid, op, code=0, msg=None):
    resp = pb.Response(id=rid, status=pb.Status(code=code, name="OK" if not code else "E",
                                                   message="" if not code else "why"))
    if msg is not None:
        getattr(resp, op.name).CopyFrom(msg)
    return frame(pb.ServerFrame(response=resp).SerializeToString())


class DecodeTest(CodecCase):
    def decode_all(self, data, chunk=None):
        out = {}
        for name, codec in self.codecs.items():
            r = codec.reader(1 << 20)
            frames = []
            step = chunk or len(data) or 1
            for i in range(0, len(data), step):
                r.feed(data[i:i + step])
                while True:
                    f = r.gets()
                    if f is None:
                        break
                    frames.append(f)
            self.assertEqual(r.pending, 0)
            out[name] = frames
        return out

    def test_every_result_matches_protobuf(self):
        rng = random.Random(SEED + 1)
        for op in OPS.values():
            if not op.result or op.name == "batch":
                continue
            result_desc = pb.Response.DESCRIPTOR.fields_by_name[op.name].message_type
            for _ in range(20):
                msg, values = random_message(rng, result_desc)
                rid = rng.randrange(1 << 64)
                data = response_frame(rid, op, 0, msg)
                want = (1, rid, 0, "OK", "", op.number, expected(result_desc, values), "")
                for name, frames in self.decode_all(data, chunk=rng.choice((1, 3, 1000))).items():
                    self.assertEqual(frames, [want], f"{name} {op.name}")
                    got = frames[0][6]
                    self.assertIs(type(got), type(want[6]), f"{name} {op.name}")

    def test_failures_and_events(self):
        rng = random.Random(SEED + 2)
        data = response_frame(5, OPS["alloc"], code=4)
        for frames in self.decode_all(data).values():
            self.assertEqual(frames, [(1, 5, 4, "E", "why", 0, None, "")])
        # EMOVED carries the URL of the session's node (Status.moved_to), in both codecs.
        moved = pb.Response(id=6, status=pb.Status(code=34, name="EMOVED", message="go",
                                                   moved_to="tcp://10.0.0.2:7420"))
        data = frame(pb.ServerFrame(response=moved).SerializeToString())
        for frames in self.decode_all(data).values():
            self.assertEqual(frames, [(1, 6, 34, "EMOVED", "go", 0, None, "tcp://10.0.0.2:7420")])
        for field in pb.Event.DESCRIPTOR.fields:
            for _ in range(10):
                msg, values = random_message(rng, field.message_type)
                ev = pb.Event()
                getattr(ev, field.name).CopyFrom(msg)
                data = frame(pb.ServerFrame(event=ev).SerializeToString())
                want = (2, field.number, expected(field.message_type, values))
                for name, frames in self.decode_all(data).items():
                    self.assertEqual(frames, [want], name)

    def test_many_frames_in_one_feed(self):
        ping = OPS["ping"]
        data = b"".join(response_frame(i, ping, 0, pb.PingResult(server_time_unix_ns=i * 7))
                        for i in range(1, 300))
        for frames in self.decode_all(data, chunk=4096).values():
            self.assertEqual([f[1] for f in frames], list(range(1, 300)))
            self.assertEqual([f[6] for f in frames], [i * 7 for i in range(1, 300)])

    def test_unknown_fields_and_kinds_are_skipped(self):
        # A newer server's fields are skipped; its result and event kinds come back raw
        # (an unknown result then fails the session's check against the request).
        resp = pb.Response(id=3, status=pb.Status(name="OK"), alloc=pb.HandleResult(handle=9))
        raw = resp.SerializeToString()
        extra = b"\xf8\x07\x05"  # field 127, a varint
        data = frame(b"\x0a" + bytes([len(raw) + len(extra)]) + raw + extra)
        for frames in self.decode_all(data).values():
            self.assertEqual(frames, [(1, 3, 0, "OK", "", 10, 9, "")])
        raw = pb.Response(id=3, status=pb.Status(name="OK")).SerializeToString()
        extra = b"\xfa\x07\x02ab"  # field 127, length-delimited: a result
        data = frame(b"\x0a" + bytes([len(raw) + len(extra)]) + raw + extra)
        for frames in self.decode_all(data).values():
            self.assertEqual(frames, [(1, 3, 0, "OK", "", 127, b"ab", "")])
        data = frame(b"\x1a\x00")  # ServerFrame field 3: a kind from a newer protocol
        for frames in self.decode_all(data).values():
            self.assertEqual(frames, [(0, 3)])
        data = frame(b"\x12\x04\xaa\x06\x01x")  # Event field 101
        for frames in self.decode_all(data).values():
            self.assertEqual(frames, [(2, 101, b"x")])

    def test_malformed(self):
        good_status = pb.Status(name="OK").SerializeToString()
        bad = {
            "empty frame": b"\x00\x00\x00\x00",
            "truncated field": frame(b"\x0a\x05"),
            "wrong wire type": frame(b"\x08\x01"),
            "no status": frame(pb.ServerFrame(response=pb.Response(id=1)).SerializeToString()),
            "two results": frame(b"\x0a" + bytes([2 + len(good_status) + 4]) + b"\x12"
                                 + bytes([len(good_status)]) + good_status
                                 + b"\x52\x00\x62\x00"),
            "bad utf-8": frame(pb.ServerFrame(response=pb.Response(
                id=1, status=pb.Status(name="OK"))).SerializeToString()
                [:-2] + b"\x02\xff\xfe"),
            "long varint": frame(b"\x0a\x0c\x08" + b"\xff" * 10 + b"\x01"),
            "group wire type": frame(b"\x0b"),
        }
        for what, data in bad.items():
            for name, codec in self.codecs.items():
                r = codec.reader()
                r.feed(data)
                with self.assertRaises(ValueError, msg=f"{name}: {what}"):
                    r.gets()

    def test_frame_limit(self):
        for codec in self.codecs.values():
            r = codec.reader(100)
            r.feed((101).to_bytes(4, "big"))
            with self.assertRaises(ValueError):
                r.gets()
            r = codec.reader(100)
            r.feed((100).to_bytes(4, "big") + b"\x00" * 99)
            self.assertIsNone(r.gets())  # the limit is checked before the body arrives
            self.assertEqual(r.pending, 103)

    def test_values_out_of_range(self):
        # A uint32 field holding 2^32 (SnapshotResult.snapshot) is refused, as are
        # int32 values beyond 32 bits.
        big = pb.Response(id=1, status=pb.Status(name="OK"))
        raw = big.SerializeToString() + b"\xe2\x04\x06\x08\x80\x80\x80\x80\x10"
        data = frame(b"\x0a" + bytes([len(raw)]) + raw)
        for name, codec in self.codecs.items():
            r = codec.reader()
            r.feed(data)
            with self.assertRaises(ValueError, msg=name):
                r.gets()

    def test_mutations_agree(self):
        """The decoders see random corruptions of real frames and must agree: the same
        decoded frames, or both a ValueError (never a crash: the C one runs under ASan in
        the sanitizer build)."""
        if "c" not in self.codecs:
            self.skipTest("no C codec")
        rng = random.Random(SEED + 3)
        seeds = []
        for op in OPS.values():
            if op.result and op.name != "batch":
                desc = pb.Response.DESCRIPTOR.fields_by_name[op.name].message_type
                msg, _ = random_message(rng, desc)
                seeds.append(response_frame(rng.randrange(1 << 64), op, 0, msg))
        for field in pb.Event.DESCRIPTOR.fields:
            msg, _ = random_message(rng, field.message_type)
            ev = pb.Event()
            getattr(ev, field.name).CopyFrom(msg)
            seeds.append(frame(pb.ServerFrame(event=ev).SerializeToString()))
        rounds = int(os.environ.get("HEAPD_TEST_MUTATIONS", "20000"))
        for _ in range(rounds):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                kind = rng.randrange(4)
                pos = rng.randrange(4, len(data)) if len(data) > 4 else 4
                if kind == 0 and pos < len(data):
                    data[pos] = rng.randrange(256)
                elif kind == 1:
                    data[pos:pos] = bytes([rng.randrange(256)])
                elif kind == 2 and pos < len(data):
                    del data[pos]
                else:
                    data[pos:pos] = rng.choice(seeds)[4:4 + rng.randrange(1, 12)]
            body = bytes(data[4:])
            data = frame(body) if rng.random() < 0.9 else bytes(data)
            outcome = {}
            for name, codec in self.codecs.items():
                r = codec.reader(1 << 16)
                r.feed(data)
                try:
                    outcome[name] = ("ok", r.gets(), r.pending)
                except ValueError:
                    outcome[name] = ("error",)
            self.assertEqual(outcome["c"], outcome["python"], data.hex())


class OpTableTest(unittest.TestCase):
    """The client reads each op's properties from the descriptor (_ops.OPS); the daemon's
    request table and the C client are generated from the same declarations (heapd_ops.def):
    the two readings must agree row for row."""

    def test_ops_match_heapd_ops_def(self):
        if not OPS_DEF:
            self.skipTest("no --ops-def")
        with open(OPS_DEF, encoding="utf-8") as f:
            text = f.read()
        block = text[text.index("#define HD_OPS(XX)"):]
        block = block[:block.index("\n\n")]
        rows = {}
        for m in re.finditer(r"XX\(([A-Z_]+), (\w+), (\d+), (\w+), \w+, \w+, (RESULT|STATUS), "
                             r"\w*, \w*, ([01]), ([01]), ([01]), ([01]), ([01])(?:, [01])*\)",
                             block):  # flags added after grows (any_session) are not the codec's
            _, name, number, family, kind, admin, readonly, unbatched, events, grows = m.groups()
            rows[name] = (int(number), family, kind == "RESULT", admin == "1",
                          readonly == "1", unbatched == "1", events == "1", grows == "1")
        self.assertEqual(len(rows), len(OPS))
        for name, op in OPS.items():
            self.assertEqual(rows[name], (op.number, op.family, op.result, op.admin,
                                          op.readonly, op.unbatched, op.eventful, op.grows),
                             name)


def _take_flag(argv, name):
    if name in argv:
        argv.remove(name)
        return True
    return False


def _take_option(argv, name):
    if name in argv:
        i = argv.index(name)
        value = argv[i + 1]
        del argv[i:i + 2]
        return value
    return None


if __name__ == "__main__":
    REQUIRE_C = _take_flag(sys.argv, "--require-c")
    OPS_DEF = _take_option(sys.argv, "--ops-def")
    checked = _take_option(sys.argv, "--speedups")
    if checked:
        _speedups = load_speedups(checked)
    unittest.main()
