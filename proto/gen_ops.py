#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""gen_ops.py: writes the protocol's lists as C X-macros, from heapd.proto's descriptor.

    gen_ops.py DESCRIPTOR_SET OPS_DEF SERVER_STATS_H

DESCRIPTOR_SET is protoc's descriptor of proto/heapd.proto with its imports and comments
(`protoc --include_imports --include_source_info --descriptor_set_out=...`);
proto/CMakeLists.txt runs both at build time. It writes
  OPS_DEF         heapd_ops.def: every op with its properties (the daemon, the C client, heapctl);
  SERVER_STATS_H  heapd/server_stats.h: HD_SERVER_STATS_MAP, one row per field of
                  ServerStatsResult with its comment, installed with the C client's header.

Ops. Each op's properties are the (heapd.v1.opdef) option on its field of Request.op; whether
it has a result is read from Response.result. The script refuses a .proto that breaks the
protocol's rules (an op without a family, a result field that answers no op, numbers or names
that differ between an op and its result), so a mistake fails the build, not a client.

Like Redis's utils/generate-command-code.py -> commands.def, the output is included by every C
program that needs the list: the daemon's request table (src/server/dispatch.c), its handlers
(src/server/ops_*.c), the C client (clients/c/client.c) and heapctl. Nothing here is heapd's
logic: only the list, in field-number order.

Server statistics. ServerStatsResult's fields are numbered 1..N with no gap, each a uint64
with a trailing comment: the C client's struct is versioned by size (it is in a shared
library), so a statistic is only ever appended, and the comment is what heapctl and the
documentation say about it.
"""

import sys

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "heapd.v1"
FAMILIES = ["SESSION", "OBJECTS", "GC", "WEAKREF", "TRACE", "STATS", "ADMIN", "INSPECT"]
# The families whose ops need admin (and only theirs do).
ADMIN_FAMILIES = ("ADMIN", "INSPECT")
# The families of ops that act on the session's heap: only they may be any_session.
HEAP_FAMILIES = ("OBJECTS", "GC", "WEAKREF", "TRACE", "STATS")
FLAGS = ["admin", "readonly", "unbatched", "events", "grows", "any_session"]


class ProtoError(Exception):
    """heapd.proto breaks a rule of the protocol."""


def c_lower(camel):
    """protobuf-c's lower-case name of a message (CamelToLower): GcGetStats -> gc_get_stats."""
    out, was_upper = "", True
    for ch in camel:
        if ch.isupper():
            if not was_upper:
                out += "_"
            out += ch.lower()
        else:
            out += ch
        was_upper = ch.isupper()
    return out


def load(path):
    """The Request and Response descriptors and a reader of a field's OpDef."""
    with open(path, "rb") as f:
        fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    factory = message_factory.MessageFactory(pool)
    ext = pool.FindExtensionByName(PACKAGE + ".opdef")
    # FieldOptions from this pool knows the extension; the options protoc wrote are parsed
    # again with it (the runtime's own FieldOptions would keep them as unknown bytes).
    field_options = factory.GetPrototype(pool.FindMessageTypeByName("google.protobuf.FieldOptions"))
    files = {fd.name: fd for fd in fds.file}
    heapd = files.get("heapd.proto")
    if heapd is None:
        raise ProtoError("the descriptor set holds no heapd.proto")
    msgs = {m.name: m for m in heapd.message_type}

    def opdef(field):
        opts = field_options.FromString(field.options.SerializeToString())
        return opts.Extensions[ext] if opts.HasExtension(ext) else None

    return msgs, opdef, pool, heapd


def oneof_fields(msg, oneof):
    index = [o.name for o in msg.oneof_decl].index(oneof)
    return [f for f in msg.field if f.HasField("oneof_index") and f.oneof_index == index]


def collect(path):
    msgs, opdef, pool, _ = load(path)
    family_enum = pool.FindEnumTypeByName(PACKAGE + ".OpDef.Family")
    results = {f.number: f for f in oneof_fields(msgs["Response"], "result")}
    ops = []
    for f in oneof_fields(msgs["Request"], "op"):
        d = opdef(f)
        where = "Request.%s = %d" % (f.name, f.number)
        if d is None:
            raise ProtoError("%s has no (opdef) option" % where)
        family = family_enum.values_by_number[d.family].name
        if family not in FAMILIES:
            raise ProtoError("%s: family %s is not one of %s" % (where, family, FAMILIES))
        if f.type != f.TYPE_MESSAGE:
            raise ProtoError("%s: an op's field is a message" % where)
        op = {
            "NAME": f.name.upper(),
            "name": f.name,
            "number": f.number,
            "family": family,
            "Request": f.type_name.rsplit(".", 1)[1],
            "Result": "",
            "kind": "STATUS",
        }
        for flag in FLAGS:
            op[flag] = int(getattr(d, flag))
        r = results.pop(f.number, None)
        if r is not None:
            if r.name != f.name:
                raise ProtoError("Response.%s = %d answers %s: the names differ"
                                 % (r.name, r.number, where))
            op["Result"] = r.type_name.rsplit(".", 1)[1]
            op["kind"] = "RESULT"
        if op["readonly"] and op["events"]:
            raise ProtoError("%s: an op that raises events is not readonly" % where)
        if op["grows"] and op["kind"] != "RESULT":
            raise ProtoError("%s: grows, but has no result field" % where)
        if op["admin"] != (family in ADMIN_FAMILIES):
            raise ProtoError("%s: admin ops, and only they, are of family ADMIN or INSPECT"
                             % where)
        if op["any_session"] and family not in HEAP_FAMILIES:
            raise ProtoError("%s: only an op on the heap (%s) may be any_session"
                             % (where, ", ".join(HEAP_FAMILIES)))
        ops.append(op)
    for r in results.values():
        raise ProtoError("Response.%s = %d answers no Request op of that number"
                         % (r.name, r.number))
    if not ops:
        raise ProtoError("Request.op has no fields")
    return sorted(ops, key=lambda o: o["number"])


def server_stats(path):
    """[(name, description)] of ServerStatsResult's fields, in field-number order."""
    msgs, _, _, heapd = load(path)
    names = [m.name for m in heapd.message_type]
    if "ServerStatsResult" not in names:
        raise ProtoError("no message ServerStatsResult")
    index = names.index("ServerStatsResult")
    comments = {}
    for loc in heapd.source_code_info.location:
        p = list(loc.path)
        if len(p) == 4 and p[0] == 4 and p[1] == index and p[2] == 2:
            comments[p[3]] = (loc.trailing_comments or loc.leading_comments).strip()
    if not comments:
        raise ProtoError("the descriptor set has no comments (protoc --include_source_info)")
    out = []
    fields = list(msgs["ServerStatsResult"].field)
    for i, f in enumerate(fields):
        where = "ServerStatsResult.%s" % f.name
        if f.type != f.TYPE_UINT64 or f.label == f.LABEL_REPEATED:
            raise ProtoError("%s: a server statistic is one uint64" % where)
        text = " ".join(comments.get(i, "").split())
        if not text:
            raise ProtoError("%s has no comment to describe it" % where)
        out.append((f.number, f.name, text.replace("\\", "\\\\").replace('"', '\\"')))
    out.sort()
    if [n for n, _, _ in out] != list(range(1, len(out) + 1)):
        raise ProtoError("ServerStatsResult's fields are not numbered 1..%d: statistics are "
                         "only appended" % len(out))
    return [(name, text) for _, name, text in out]


SERVER_STATS_HEADER = """\
/*
 * heapd/server_stats.h: the server's statistics, one row per field of ServerStatsResult.
 *
 * Generated by proto/gen_ops.py from proto/heapd.proto: do not edit. XX(name, description),
 * each a uint64 of server_stats, in field-number order; a new statistic is only ever
 * appended (hdc_server_stats_t is versioned by size).
 */
#ifndef HEAPD_SERVER_STATS_H
#define HEAPD_SERVER_STATS_H

"""


def render_server_stats(stats):
    rows = ['XX(%s, "%s")' % (name, text) for name, text in stats]
    return (SERVER_STATS_HEADER + "#define HD_SERVER_STATS_COUNT %d\n\n" % len(stats)
            + macro("HD_SERVER_STATS_MAP", rows) + "\n#endif /* HEAPD_SERVER_STATS_H */\n")


def row(op):
    return "XX(%s, %s, %d, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)" % (
        op["NAME"], op["name"], op["number"], op["family"], op["Request"],
        c_lower(op["Request"]), op["kind"], op["Result"],
        c_lower(op["Result"]) if op["Result"] else "",
        *[str(op[f]) for f in FLAGS])


def macro(name, lines):
    if not lines:
        return "#define %s(XX)\n" % name
    body = " \\\n".join("    " + l for l in lines)
    return "#define %s(XX) \\\n%s\n" % (name, body)


HEADER = """\
/*
 * heapd_ops.def: the ops of the protocol heapd.v1, one row each, in field-number order.
 *
 * Generated by proto/gen_ops.py from proto/heapd.proto: do not edit. Change an op's (opdef)
 * option in the .proto, and the build writes this file again.
 *
 * XX(NAME, name, number, FAMILY, Request, request, KIND, Result, result,
 *    admin, readonly, unbatched, events, grows, any_session)
 *   NAME, name       the op's field of Request.op: HEAPD__V1__REQUEST__OP_<NAME>, rq-><name>
 *   number           its field number; a result field has the same one
 *   FAMILY           SESSION, OBJECTS, GC, WEAKREF, TRACE, STATS, ADMIN or INSPECT (OpDef.Family)
 *   Request, request its message: the type Heapd__V1__<Request>, heapd__v1__<request>__*
 *   KIND             RESULT when Response.result has the field <name>, else STATUS
 *   Result, result   that field's message, as Request/request (empty for STATUS)
 *   admin ... any_session  OpDef's flags, 0 or 1 (proto/heapd.proto says what each means)
 *
 * HD_OPS(XX) lists every op; HD_OPS_<FAMILY>(XX) the ops of one family; HD_OP_FAMILIES(XX)
 * the families, as XX(FAMILY, family).
 */
#ifndef HEAPD_OPS_DEF
#define HEAPD_OPS_DEF
"""


def render(ops):
    out = [HEADER]
    out.append("#define HD_OPS_COUNT %d" % len(ops))
    out.append("#define HD_OPS_MAX_NUMBER %d\n" % max(o["number"] for o in ops))
    out.append(macro("HD_OP_FAMILIES", ["XX(%s, %s)" % (f, f.lower()) for f in FAMILIES]))
    for fam in FAMILIES:
        out.append(macro("HD_OPS_" + fam, [row(o) for o in ops if o["family"] == fam]))
    out.append(macro("HD_OPS", [row(o) for o in ops]))
    out.append("#endif /* HEAPD_OPS_DEF */\n")
    return "\n".join(out)


def main(argv):
    if len(argv) != 4:
        sys.stderr.write("usage: gen_ops.py DESCRIPTOR_SET OPS_DEF SERVER_STATS_H\n")
        return 2
    try:
        ops_text = render(collect(argv[1]))
        stats_text = render_server_stats(server_stats(argv[1]))
    except ProtoError as e:
        sys.stderr.write("gen_ops.py: proto/heapd.proto: %s\n" % e)
        return 1
    for path, text in ((argv[2], ops_text), (argv[3], stats_text)):
        with open(path, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
