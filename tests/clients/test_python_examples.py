#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Runs every script in clients/python/examples against a real heapd.

Each example retells a code example of the Python memory-management tutorials against a
live daemon; this test starts one (test_python_client.Daemon), runs every script with
the daemon's URL as argv[1] (one of them through $HEAPD_URL instead), and checks that
each exits 0, prints something, and reports no exception on stderr.

Run (ctest does, through heapd_daemon_test): HEAPD_BIN=<build>/bin/heapd
    PYTHONPATH=tests/server:<build>/clients/python /usr/bin/python3 test_python_examples.py
    [--examples DIR]
"""

import glob
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_python_client import USER_TOKEN, Daemon  # noqa: E402

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients",
                            "python", "examples")

# The scripts the examples directory must hold: one per topic of the tutorials.
EXPECTED = {
    "refcount.py", "getrefcount.py", "cycles.py", "generations.py", "weakrefs.py",
    "context_managers.py", "slots.py", "generators.py", "leak.py", "space_tips.py",
    "stack_and_heap.py", "pools.py",
}


class ExamplesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon().start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop(show_log=cls.failed)

    failed = False

    def scripts(self):
        return sorted(glob.glob(os.path.join(EXAMPLES_DIR, "*.py")))

    def run_script(self, script, *args, url_env=None):
        """Runs one example; the URL comes from args, or from $HEAPD_URL = url_env."""
        env = dict(os.environ, HEAPD_TOKEN=USER_TOKEN)
        env.pop("HEAPD_URL", None)
        if url_env:
            env["HEAPD_URL"] = url_env
        return subprocess.run([sys.executable, script, *args], env=env, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)

    def check(self, script, proc):
        name = os.path.basename(script)
        detail = f"\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        if proc.returncode != 0 or not proc.stdout.strip() or "Traceback" in proc.stderr \
                or "Exception ignored" in proc.stderr:
            type(self).failed = True
        self.assertEqual(proc.returncode, 0, f"{name} exited {proc.returncode}{detail}")
        self.assertTrue(proc.stdout.strip(), f"{name} printed nothing{detail}")
        self.assertNotIn("Traceback", proc.stderr, f"{name}{detail}")
        self.assertNotIn("Exception ignored", proc.stderr, f"{name}{detail}")

    def test_every_topic_has_an_example(self):
        found = {os.path.basename(p) for p in self.scripts()}
        self.assertLessEqual(EXPECTED, found)

    def test_examples_run(self):
        scripts = self.scripts()
        self.assertTrue(scripts, f"no examples in {EXAMPLES_DIR}")
        for script in scripts:
            with self.subTest(example=os.path.basename(script)):
                self.check(script, self.run_script(script, self.daemon.url))

    def test_url_from_environment(self):
        script = os.path.join(EXAMPLES_DIR, "refcount.py")
        proc = self.run_script(script, url_env=self.daemon.tcp_url)
        self.check(script, proc)
        self.assertIn("reference count = 2", proc.stdout)


if __name__ == "__main__":
    if "--examples" in sys.argv:
        i = sys.argv.index("--examples")
        EXAMPLES_DIR = sys.argv[i + 1]
        del sys.argv[i:i + 2]
    unittest.main()
