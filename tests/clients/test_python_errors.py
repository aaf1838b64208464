#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Unit tests of the Python client that need no daemon.

The main one keeps the client's exception table honest: it parses HD_ERR_MAP out of
src/heap/heap.h (the one list every status code comes from) and checks that
heapd.errors.ERROR_MAP has exactly the same rows, in the same order, so the two lists
cannot drift apart.  Others check the exception classes generated from the table, the
URL parser and the framing helpers.

Run: PYTHONPATH=<build>/clients/python /usr/bin/python3 test_python_errors.py [--heap-h PATH]
"""

import os
import re
import socket
import subprocess
import sys
import unittest

import heapd
from heapd import errors

HEAP_H = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "heap",
                      "heap.h")


def parse_err_map(path):
    """The rows of HD_ERR_MAP in heap.h, as (NAME, number, message) tuples."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"#define\s+HD_ERR_MAP\(XX\)((?:.*\\\n)*.*\n)", text)
    if match is None:
        raise AssertionError(f"no HD_ERR_MAP in {path}")
    body = match.group(1).replace("\\\n", "\n")
    rows = re.findall(r'XX\(\s*(\w+)\s*,\s*(\d+)\s*,\s*"((?:[^"\\]|\\.)*)"\s*\)', body)
    if len(rows) != body.count("XX("):
        raise AssertionError("an HD_ERR_MAP row did not parse")
    return [(name, int(num), msg) for name, num, msg in rows]


class ErrorTableTest(unittest.TestCase):
    def test_table_matches_heap_h_exactly(self):
        header = parse_err_map(HEAP_H)
        self.assertGreater(len(header), 10)
        ours = [(name, code, message) for name, code, message, _, _ in errors.ERROR_MAP]
        self.assertEqual(ours, header)

    def test_one_class_per_row(self):
        names = set()
        for name, code, message, cls_name, extra in errors.ERROR_MAP:
            cls = getattr(heapd, cls_name)
            self.assertIs(cls, getattr(errors, cls_name))
            self.assertTrue(issubclass(cls, heapd.Error))
            for base in extra:
                self.assertTrue(issubclass(cls, base))
            self.assertEqual((cls.code, cls.name, cls.message), (code, name, message))
            self.assertIs(errors.error_class(code), cls)
            names.add(cls_name)
        self.assertEqual(len(names), len(errors.ERROR_MAP))

    def test_python_builtins(self):
        self.assertTrue(issubclass(heapd.OutOfMemory, MemoryError))
        self.assertTrue(issubclass(heapd.LimitReached, MemoryError))
        self.assertTrue(issubclass(heapd.InvalidArgument, ValueError))
        self.assertTrue(issubclass(heapd.OutOfRange, IndexError))
        self.assertTrue(issubclass(heapd.NotTracing, RuntimeError))
        self.assertTrue(issubclass(heapd.RefcountOverflow, OverflowError))
        self.assertTrue(issubclass(heapd.ReferenceReleased, ValueError))
        self.assertTrue(issubclass(heapd.ConnectionClosed, ConnectionError))
        self.assertTrue(issubclass(heapd.NoSuchObject, heapd.Error))
        self.assertFalse(issubclass(heapd.NoSuchObject, ValueError))

    def test_error_from_status(self):
        exc = errors.error_from_status(4, "handle 0x1 is stale")
        self.assertIsInstance(exc, heapd.NoSuchObject)
        self.assertEqual(exc.code, 4)
        self.assertEqual(exc.name, "ENOOBJ")
        self.assertEqual(exc.detail, "handle 0x1 is stale")
        self.assertIn("ENOOBJ", str(exc))
        self.assertIn("handle 0x1 is stale", str(exc))
        unknown = errors.error_from_status(1234, "from the future")
        self.assertIs(type(unknown), heapd.Error)
        self.assertEqual(unknown.code, 1234)
        self.assertIn("1234", str(unknown))
        self.assertIs(errors.error_class(1234), heapd.Error)

    def test_error_without_detail(self):
        exc = heapd.OutOfMemory()
        self.assertIsNone(exc.detail)
        self.assertEqual(str(exc), "[ENOMEM] out of memory")


class UrlTest(unittest.TestCase):
    # The forms of heapctl --connect (clients/c/client.c open_url).
    def test_tcp(self):
        self.assertEqual(heapd.parse_url("tcp://127.0.0.1:7420"),
                         (socket.AF_UNSPEC, ("127.0.0.1", 7420)))
        self.assertEqual(heapd.parse_url("tcp://[::1]:9"), (socket.AF_UNSPEC, ("::1", 9)))
        self.assertEqual(heapd.parse_url("tcp://localhost:0"),
                         (socket.AF_UNSPEC, ("localhost", 0)))
        self.assertEqual(heapd.DEFAULT_URL, "tcp://127.0.0.1:7420")

    def test_host_port(self):
        self.assertEqual(heapd.parse_url("127.0.0.1:7420"),
                         (socket.AF_UNSPEC, ("127.0.0.1", 7420)))
        self.assertEqual(heapd.parse_url("db.example:65535"),
                         (socket.AF_UNSPEC, ("db.example", 65535)))
        self.assertEqual(heapd.parse_url("[fe80::1]:80"), (socket.AF_UNSPEC, ("fe80::1", 80)))

    def test_unix(self):
        for url in ("unix:/run/heapd.sock", "unix:///run/heapd.sock", "/run/heapd.sock"):
            self.assertEqual(heapd.parse_url(url), (socket.AF_UNIX, "/run/heapd.sock"))
        self.assertEqual(heapd.parse_url("unix:rel.sock"), (socket.AF_UNIX, "rel.sock"))

    def test_bad(self):
        for url in ("http://x:1", "tcp://host", "tcp://:5", "unix:", "", "host", ":7420",
                    "host:", "host:port", "host:65536", "host:-1", "[::1]", "[::1:80",
                    "tcp://[::1]9", "rel/path:80", "host:７"):
            with self.assertRaises(ValueError, msg=url):
                heapd.parse_url(url)
        with self.assertRaises(TypeError):
            heapd.parse_url(None)

    def test_connect_refused_is_connection_closed(self):
        with self.assertRaises(heapd.ConnectionClosed):
            heapd.connect("unix:/nonexistent/heapd-test.sock", connect_timeout=1)


class ImportTest(unittest.TestCase):
    def test_without_protobuf_names_the_debian_package(self):
        # A Python without the protobuf module: importing heapd says what to install.
        code = """
import sys
class NoGoogle:
    def find_spec(self, name, path=None, target=None):
        if name == "google" or name.startswith("google."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoGoogle())
try:
    import heapd
except ImportError as exc:
    print("ImportError:", exc)
else:
    print("imported")
"""
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        self.assertIn("ImportError:", out.stdout, out.stderr)
        self.assertIn("python3-protobuf", out.stdout)
        self.assertIn("apt-get install python3-protobuf", out.stdout)

    def test_implementation_can_be_chosen(self):
        for choice in ("python", "c"):
            out = subprocess.run(
                [sys.executable, "-c", "import heapd; print(heapd.implementation)"],
                capture_output=True, text=True, timeout=60,
                env=dict(os.environ, HEAPD_PYTHON_IMPLEMENTATION=choice))
            if choice == "c" and out.returncode and "_speedups" in out.stderr:
                continue  # built without the C codec: choosing it fails, as it should
            self.assertEqual(out.stdout.strip(), choice, out.stderr)
        out = subprocess.run([sys.executable, "-c", "import heapd"], capture_output=True,
                             text=True, timeout=60,
                             env=dict(os.environ, HEAPD_PYTHON_IMPLEMENTATION="fortran"))
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("HEAPD_PYTHON_IMPLEMENTATION", out.stderr)


class GcConstantsTest(unittest.TestCase):
    def test_debug_flags_match_heap_h(self):
        with open(HEAP_H, encoding="utf-8") as f:
            text = f.read()
        for name in ("STATS", "COLLECTABLE", "UNCOLLECTABLE", "SAVEALL"):
            value = int(re.search(rf"#define HD_GC_DEBUG_{name}\s+(\d+)", text).group(1))
            self.assertEqual(getattr(heapd, f"DEBUG_{name}"), value)
            self.assertEqual(getattr(heapd.GC, f"DEBUG_{name}"), value)
        self.assertEqual(heapd.DEBUG_LEAK, heapd.DEBUG_COLLECTABLE | heapd.DEBUG_UNCOLLECTABLE
                         | heapd.DEBUG_SAVEALL)


def _take_option(argv, name):
    """Removes ``name VALUE`` from argv (before unittest sees it) and returns VALUE."""
    if name in argv:
        i = argv.index(name)
        value = argv[i + 1]
        del argv[i:i + 2]
        return value
    return None


if __name__ == "__main__":
    HEAP_H = _take_option(sys.argv, "--heap-h") or HEAP_H
    unittest.main()
