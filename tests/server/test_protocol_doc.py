# SPDX-License-Identifier: MIT
"""test_protocol_doc.py: docs/PROTOCOL.md and proto/heapd.proto say the same about every op.

No daemon: the op list is read from heapd_pb2's descriptor (the (opdef) option of each field
of Request.op, and Response.result), and the operation tables from PROTOCOL.md. Checks that
  - every op has its (opdef), with a family;
  - every result field answers the op of the same number and name;
  - PROTOCOL.md's operation tables list every op, with its number, and no op that is not one;
  - each row's result, admin, mutates and events columns agree with the .proto;
  - session_op's prose names exactly the ops whose (opdef) says any_session.
The generator (proto/gen_ops.py) refuses a .proto that breaks the first two at build time;
this test keeps the document honest, and checks the options are in heapd_pb2 for clients.
"""

import os
import re
import unittest

import harness  # noqa: F401  (puts heapd_pb2 on the path)
import heapd_pb2 as pb

DOC = os.path.join(os.environ.get("HEAPD_SOURCE_DIR", "."), "docs", "PROTOCOL.md")


def ops():
    return {f.name: f for f in pb.Request.DESCRIPTOR.oneofs_by_name["op"].fields}


def results():
    return {f.name: f for f in pb.Response.DESCRIPTOR.oneofs_by_name["result"].fields}


def opdef(field):
    opts = field.GetOptions()
    return opts.Extensions[pb.opdef] if opts.HasExtension(pb.opdef) else None


def doc_rows():
    """(names and numbers, columns) of each row of the operation tables."""
    with open(DOC) as f:
        text = f.read()
    section = text[text.index("\n## Operations"):text.index("\n## Status codes")]
    rows = []
    header = None
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "op":
            header = cells
            continue
        names = [(n, int(num)) for n, num in re.findall(r"`(\w+)` \((\d+)", cells[0])]
        rows.append((names, dict(zip(header, cells))))
    return rows


class ProtocolDoc(unittest.TestCase):
    def test_every_op_has_its_definition(self):
        for name, f in ops().items():
            d = opdef(f)
            self.assertIsNotNone(d, name)
            self.assertNotEqual(d.family, pb.OpDef.FAMILY_UNSPECIFIED, name)
            self.assertEqual(d.admin, d.family in (pb.OpDef.ADMIN, pb.OpDef.INSPECT), name)

    def test_results_answer_ops_of_their_number(self):
        by_number = {f.number: f for f in ops().values()}
        for name, r in results().items():
            self.assertIn(r.number, by_number, name)
            self.assertEqual(by_number[r.number].name, name)
        self.assertNotIn(pb.Response.DESCRIPTOR.fields_by_name["status"].number, by_number)

    def test_doc_lists_every_op(self):
        listed = {}
        for names, _ in doc_rows():
            for name, number in names:
                self.assertNotIn(name, listed, "listed twice")
                listed[name] = number
        want = {name: f.number for name, f in ops().items()}
        self.assertEqual(listed, want)

    def test_doc_columns_match_the_proto(self):
        res = results()
        for names, cols in doc_rows():
            for name, _ in names:
                d = opdef(ops()[name])
                where = "PROTOCOL.md row of %s" % name
                self.assertEqual(cols["admin"] == "yes", d.admin, where + ": admin")
                self.assertEqual(cols["mutates"] == "yes", not d.readonly, where + ": mutates")
                self.assertEqual(cols["events"] == "yes", d.events, where + ": events")
                if name in res:
                    self.assertIn(res[name].message_type.name, cols["result"], where)
                elif name != "hello":
                    self.assertEqual(cols["result"], "—", where + ": has no result")

    def test_session_op_lists_the_any_session_ops(self):
        with open(DOC) as f:
            text = f.read()
        start = text.index("`session_op` runs one op in that session")
        prose = text[start:text.index("\n\n", start)]
        listed = set(re.findall(r"`(\w+)`", prose)) - {"session_op", "any_session", "(opdef)"}
        want = {name for name, f in ops().items() if opdef(f).any_session}
        self.assertEqual(listed, want)


if __name__ == "__main__":
    unittest.main(verbosity=2)
