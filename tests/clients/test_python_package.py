#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The Python package installs the three ways it is meant to, with nothing downloaded:

* ``pip install --no-index clients/python`` into a virtual environment (the pyproject.toml's
  own build backend needs nothing from an index): the installed package has its C codec,
  the project's version, and talks to a real heapd; with ``--config-settings speedups=no``
  it is the pure-Python package;
* ``python3 -m build`` (when Debian's python3-build is installed) makes an sdist and a wheel,
  and the sdist, away from the repository, installs with pip too;
* ``cmake --install`` puts the same package, C codec included, under the prefix.

Run (ctest does, through heapd_daemon_test): HEAPD_BIN=<build>/bin/heapd
    PYTHONPATH=tests/server /usr/bin/python3 test_python_package.py <build>
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest
import zipfile

import harness

PYTHON = "/usr/bin/python3"
SOURCE = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PACKAGE_DIR = os.path.join(SOURCE, "clients", "python")
BUILD_DIR = None

with open(os.path.join(SOURCE, "CMakeLists.txt"), encoding="utf-8") as _f:
    VERSION = re.search(r"project\(heapd VERSION ([0-9.]+)", _f.read()).group(1)

# What a program run by the installed package prints: where heapd came from, its codec, its
# version, and the answer of a real server.
PROBE = """
import sys, heapd
s = heapd.connect(sys.argv[1])
print(heapd.__file__)
print(heapd.implementation, heapd.__version__, s.ping() > 0, s.alloc(data=b"ok").read())
s.close()
"""


def run(*args, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 300)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # only what was installed, not the build tree
    env.update(kw.pop("env", {}))
    # No index to reach: a download would fail the test instead of hanging on the network.
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1")
    return subprocess.run(list(args), env=env, **kw)


class PackageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = harness.Daemon().start()
        cls.url = f"unix:{cls.daemon.unix_addr}"

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="heapd-pkg-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def venv(self, name):
        """A virtual environment seeing Debian's packages (pip, protobuf), without pip of its
        own (that would need python3-venv's ensurepip)."""
        path = os.path.join(self.tmp, name)
        r = run(PYTHON, "-m", "venv", "--without-pip", "--system-site-packages", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        return os.path.join(path, "bin", "python")

    def probe(self, python, **env):
        r = run(python, "-c", PROBE, self.url, env=env)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        where, answer = r.stdout.strip().split("\n")
        return where, answer

    def test_pip_install_offline(self):
        py = self.venv("env")
        r = run(py, "-m", "pip", "install", PACKAGE_DIR)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        where, answer = self.probe(py)
        self.assertTrue(where.startswith(self.tmp), where)
        self.assertEqual(answer, f"c {VERSION} True b'ok'")
        # The source tree is left as it was: nothing generated in it.
        self.assertFalse(os.path.exists(os.path.join(PACKAGE_DIR, "heapd", "_proto")))
        self.assertFalse(os.path.exists(os.path.join(PACKAGE_DIR, "heapd", "_version.py")))

    def test_pip_install_pure_python(self):
        py = self.venv("pure")
        r = run(py, "-m", "pip", "install", "--config-settings", "speedups=no", PACKAGE_DIR)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.probe(py)[1], f"python {VERSION} True b'ok'")

    @unittest.skipUnless(importlib.util.find_spec("build"), "no python3-build")
    def test_build_sdist_and_wheel(self):
        out = os.path.join(self.tmp, "dist")
        r = run(PYTHON, "-m", "build", "--no-isolation", "--outdir", out, PACKAGE_DIR)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        names = sorted(os.listdir(out))
        self.assertEqual(len(names), 2, names)
        sdist = [n for n in names if n.endswith(".tar.gz")][0]
        wheel = [n for n in names if n.endswith(".whl")][0]
        self.assertEqual(sdist, f"heapd-{VERSION}.tar.gz")
        self.assertRegex(wheel, rf"^heapd-{re.escape(VERSION)}-cp3\d+-cp3\d+-linux_\w+\.whl$")
        with zipfile.ZipFile(os.path.join(out, wheel)) as z:
            files = set(z.namelist())
            metadata = z.read(f"heapd-{VERSION}.dist-info/METADATA").decode()
        self.assertIn("heapd/_proto/heapd_pb2.py", files)
        self.assertIn("heapd/_version.py", files)
        self.assertTrue(any(f.startswith("heapd/_speedups.") and f.endswith(".so")
                            for f in files), files)
        self.assertIn("Requires-Dist: protobuf", metadata)
        self.assertIn(f"Version: {VERSION}", metadata)
        # The sdist builds on its own, away from the repository (no protoc, no proto/).
        with tarfile.open(os.path.join(out, sdist)) as t:
            t.extractall(os.path.join(self.tmp, "unpacked"))
        unpacked = os.path.join(self.tmp, "unpacked", f"heapd-{VERSION}")
        py = self.venv("from-sdist")
        r = run(py, "-m", "pip", "install", unpacked)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.probe(py)[1], f"c {VERSION} True b'ok'")

    def test_cmake_install(self):
        prefix = os.path.join(self.tmp, "prefix")
        r = run("cmake", "--install", BUILD_DIR, "--prefix", prefix, "--component", "python")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        site = os.path.join(prefix, "lib", "python%d.%d" % sys.version_info[:2],
                            "dist-packages")
        files = os.listdir(os.path.join(site, "heapd"))
        self.assertIn("_version.py", files)
        self.assertTrue(any(f.startswith("_speedups.") for f in files), files)
        where, answer = self.probe(PYTHON, PYTHONPATH=site)
        self.assertTrue(where.startswith(site), where)
        self.assertEqual(answer, f"c {VERSION} True b'ok'")


if __name__ == "__main__":
    BUILD_DIR = sys.argv.pop(1)
    unittest.main()
