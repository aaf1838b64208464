# SPDX-License-Identifier: MIT
"""common.py: what the packaging tests share: the repository's files.

source_files() lists the files of the source tree as git sees them (tracked, plus untracked
ones that are not ignored, so a change being tested is included), or, outside a checkout,
every file but the build trees. test_release.py scans them; test_package.py copies them to
build the Debian packages from.
"""

import os
import subprocess

SOURCE_DIR = os.environ.get("HEAPD_SOURCE_DIR",
                            os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

# Build outputs that can sit in the tree: CMake build directories, and what dpkg-buildpackage
# leaves when it is run in place (debian/rules clean removes it).
_GENERATED = ("build/", "build-", "obj-", "debian/.debhelper/", "debian/tmp/", "debian/heapd/",
              "debian/libheapdclient1/", "debian/libheapdclient-dev/", "debian/python3-heapd/")


def source_files():
    """Paths relative to SOURCE_DIR of the repository's regular files and symlinks."""
    r = subprocess.run(["git", "-C", SOURCE_DIR, "ls-files", "--cached", "--others",
                        "--exclude-standard"], capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.strip():
        files = r.stdout.splitlines()
    else:
        files = []
        for root, dirs, names in os.walk(SOURCE_DIR):
            dirs[:] = [d for d in dirs if d != ".git"]
            for n in names:
                files.append(os.path.relpath(os.path.join(root, n), SOURCE_DIR))
    out = []
    for rel in files:
        if rel.startswith(_GENERATED) or "/__pycache__/" in "/" + rel:
            continue
        path = os.path.join(SOURCE_DIR, rel)
        if os.path.islink(path) or os.path.isfile(path):
            out.append(rel)
    return sorted(out)
