# SPDX-License-Identifier: MIT
"""Runs a Python test under the sanitizers' runtime, for the C codec's checked build.

In a build with HEAPD_ASAN or HEAPD_UBSAN, clients/python builds a checked twin of
heapd._speedups, and an instrumented library can only be loaded into a process whose first
library is the ASan runtime. The ctest registration (python_tests.cmake) then sets
HEAPD_PY_SANITIZER_PRELOAD to the runtimes; importing this module re-executes the test with
them in LD_PRELOAD. CPython's own memory, which it does not free at exit, is not reported
(detect_leaks=0 for the Python process); a daemon the test starts would get the options the
suite gave and no preload (daemon_env()).
"""

import os
import sys

_PRELOAD = os.environ.get("HEAPD_PY_SANITIZER_PRELOAD", "")

if _PRELOAD and os.environ.get("HEAPD_PY_SANITIZER_ACTIVE") != "1":
    env = dict(os.environ)
    env["HEAPD_PY_SANITIZER_ACTIVE"] = "1"
    env["HEAPD_DAEMON_ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "")
    env["LD_PRELOAD"] = " ".join(p for p in (_PRELOAD, env.get("LD_PRELOAD", "")) if p)
    options = [o for o in env.get("ASAN_OPTIONS", "").split(":") if o
               and not o.startswith("detect_leaks=")]
    env["ASAN_OPTIONS"] = ":".join(options + ["detect_leaks=0"])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def daemon_env(env=None):
    """The environment for a daemon started by a test: the test's own, without the
    preload and with the sanitizer options the suite gave."""
    env = dict(os.environ if env is None else env)
    if env.pop("HEAPD_PY_SANITIZER_ACTIVE", None) == "1":
        preload = [p for p in env.get("LD_PRELOAD", "").split() if p not in _PRELOAD.split()]
        if preload:
            env["LD_PRELOAD"] = " ".join(preload)
        else:
            env.pop("LD_PRELOAD", None)
        env["ASAN_OPTIONS"] = env.pop("HEAPD_DAEMON_ASAN_OPTIONS", "")
    return env
