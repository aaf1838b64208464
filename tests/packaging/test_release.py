# SPDX-License-Identifier: MIT
"""test_release.py: one version everywhere, and one license.

The version is written once, in project(heapd VERSION X.Y.Z) in the top CMakeLists.txt (ctest
passes it as HEAPD_VERSION). Everything that shows a version must show that one: heapd
--version, heapctl --version, heapd.__version__, the C library's pkg-config file and file
name, the man pages (test_man.py), CHANGELOG.md's latest release and debian/changelog's
upstream version. And no other file may spell it out for the build: a copy would drift at the
next release. The library's SONAME has its own number (HEAPD_CLIENT_SOVERSION, bumped on ABI
breaks), which the Debian package's name and symbols file must follow.

The license is MIT (LICENSE). No file may name another one, in an SPDX line or in words, so a
header pasted from elsewhere, or a dependency vendored under another license, is caught here.
"""

import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import source_files  # noqa: E402

SOURCE_DIR = os.environ["HEAPD_SOURCE_DIR"]
BUILD_DIR = os.environ["HEAPD_BUILD_DIR"]
VERSION = os.environ["HEAPD_VERSION"]

# Files allowed to contain the version string: the one source, the two changelogs, the
# protocol's examples of a hello answer (a wire format sample, not used by any build), and:
VERSION_ALLOWED = {"CMakeLists.txt", "CHANGELOG.md", "debian/changelog", "docs/PROTOCOL.md",
                   # The version each symbol first appeared in: history, not the current one.
                   "debian/libheapdclient1.symbols"}

# Words and identifiers that name a license other than MIT.
OTHER_LICENSES = re.compile(
    r"\b(?:A|L)?GPL(?:v?[123](?:\.\d)?)?(?:\+|-only|-or-later)?\b"
    r"|GNU (?:Lesser |Library |Affero )?General Public License"
    r"|Apache License|Apache-2\.0|Mozilla Public License|\bMPL-[12]\.\d"
    r"|\bBSD-[234]-Clause|\bBSD licen[sc]e|\bISC licen[sc]e|\b0BSD\b"
    r"|Creative Commons|\bCC-BY|\bCC0\b|The Unlicense|\bWTFPL\b|Boost Software License|\bBSL-1\.0"
    r"|Eclipse Public License|\bEPL-\d|Python Software Foundation License|\bPSF-2\.0"
    r"|\bZlib License|\bArtistic License|public domain",
    re.I)
SPDX = re.compile(r"SPDX-License-Identifier:\s*(.+?)\s*(?:\*/|-->|$)", re.M)
# Files that must carry an SPDX line: code, build files, scripts, units and the shipped config.
SPDX_REQUIRED = re.compile(
    r"\.(?:c|h|py|proto|sh|cmake|js|css|html|lua|yaml|toml|service|socket|sysusers)$"
    r"|(?:^|/)CMakeLists\.txt$|^\.ci/[^/]+$|^debian/rules$|^debian/heapd\.postinst$|\.pc\.in$|\.h\.in$")
# Test data: fuzz corpora and seeds are inputs, not source.
SPDX_EXEMPT = re.compile(r"(?:^|/)(?:fuzz_corpus|[^/]*_seeds|fixtures)/")
# Where license names belong: the license itself, and this test's own list of them.
LICENSE_ALLOWED = {"LICENSE", "tests/packaging/test_release.py"}


def run(*cmd, env=None):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, **(env or {})))


def read_text(rel):
    if os.path.islink(os.path.join(SOURCE_DIR, rel)):
        return None  # its target is scanned in its own right
    try:
        with open(os.path.join(SOURCE_DIR, rel), encoding="utf-8") as f:
            return f.read()
    except (UnicodeDecodeError, OSError):
        return None  # binary: a corpus file, an image


class VersionTest(unittest.TestCase):
    def test_semantic(self):
        self.assertRegex(VERSION, r"^\d+\.\d+\.\d+$")

    def test_heapd(self):
        out = run(os.environ["HEAPD_BIN"], "--version").stdout
        self.assertRegex(out, r"^heapd %s \(protocol \d+\)\n$" % re.escape(VERSION))

    def test_heapctl(self):
        self.assertEqual(run(os.environ["HEAPCTL_BIN"], "--version").stdout,
                         "heapctl %s\n" % VERSION)

    def test_python_package(self):
        r = run("/usr/bin/python3", "-c",
                "import heapd, heapd._session as s; print(heapd.__version__, s.CLIENT_NAME)")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "%s heapd-python/%s\n" % (VERSION, VERSION))

    def test_pkg_config_file(self):
        pc = os.path.join(BUILD_DIR, "clients", "c", "heapdclient.pc")
        with open(pc, encoding="utf-8") as f:
            self.assertIn("\nVersion: %s\n" % VERSION, f.read())

    def test_library_soname(self):
        lib = os.path.realpath(os.environ["HEAPD_CLIENT_LIB"])
        self.assertTrue(lib.endswith(".so." + VERSION), lib)
        r = run("readelf", "-d", lib)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Library soname: [libheapdclient.so.%s]"
                      % os.environ["HEAPD_CLIENT_SOVERSION"], r.stdout)

    def test_changelog_has_this_version(self):
        with open(os.path.join(SOURCE_DIR, "CHANGELOG.md"), encoding="utf-8") as f:
            text = f.read()
        releases = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d\d-\d\d))?$", text, re.M)
        self.assertTrue(releases, "CHANGELOG.md has no '## [X.Y.Z] - DATE' headings")
        self.assertEqual(releases[0], ("Unreleased", ""),
                         "CHANGELOG.md starts with an [Unreleased] section (Keep a Changelog)")
        versions = [v for v, d in releases[1:]]
        self.assertIn(VERSION, versions, "CHANGELOG.md has no section for %s" % VERSION)
        self.assertEqual(versions[0], VERSION, "the latest release in CHANGELOG.md is not "
                                               "project(VERSION)")
        for v, d in releases[1:]:
            self.assertRegex(v, r"^\d+\.\d+\.\d+$")
            self.assertTrue(d, "release %s has no date" % v)

    def test_debian_changelog(self):
        with open(os.path.join(SOURCE_DIR, "debian", "changelog"), encoding="utf-8") as f:
            first = f.readline()
        m = re.match(r"heapd \((?:\d+:)?([^)-]+)-(\d+)\) ", first)
        self.assertTrue(m, "debian/changelog's first line: %r" % first)
        self.assertEqual(m.group(1), VERSION, "debian/changelog's upstream version is not "
                                              "project(VERSION): add an entry (dch -v %s-1)"
                         % VERSION)

    def test_debian_library_package_follows_the_soname(self):
        so = os.environ["HEAPD_CLIENT_SOVERSION"]
        with open(os.path.join(SOURCE_DIR, "debian", "control"), encoding="utf-8") as f:
            control = f.read()
        self.assertIn("\nPackage: libheapdclient%s\n" % so, control)
        self.assertIn("libheapdclient%s (= ${binary:Version})" % so, control)
        symbols = os.path.join(SOURCE_DIR, "debian", "libheapdclient%s.symbols" % so)
        with open(symbols, encoding="utf-8") as f:
            lines = [l for l in f if not l.startswith("#")]
        self.assertEqual(lines[0], "libheapdclient.so.%s libheapdclient%s #MINVER#\n" % (so, so))

    def test_debian_build_depends_has_the_libraries(self):
        # Every library (and header package) .ci/setup installs for the build must be a build
        # dependency of the source package, or dpkg-buildpackage works on CI machines only.
        with open(os.path.join(SOURCE_DIR, ".ci", "setup"), encoding="utf-8") as f:
            setup = f.read()
        packages = re.search(r"PACKAGES=\((.*?)\)", setup, re.S).group(1).split()
        with open(os.path.join(SOURCE_DIR, "debian", "control"), encoding="utf-8") as f:
            control = f.read()
        build_depends = re.search(r"^Build-Depends:(.*?)^\S", control, re.S | re.M).group(1)
        names = set(re.findall(r"([a-z0-9][a-z0-9+.-]+)", build_depends))
        wanted = [p for p in packages if p.endswith("-dev") and "clang" not in p]
        self.assertGreater(len(wanted), 3)
        self.assertEqual([p for p in wanted if p not in names], [],
                         "libraries in .ci/setup but not in debian/control's Build-Depends")

    def test_written_once(self):
        pattern = re.compile(r"(?<![\d.])%s(?![\d.])" % re.escape(VERSION))
        copies = []
        for rel in source_files():
            if rel in VERSION_ALLOWED:
                continue
            text = read_text(rel)
            if text is not None and pattern.search(text):
                copies.append(rel)
        self.assertEqual(copies, [], "these files spell out the version %s; take it from "
                                     "project(VERSION) (HEAPD_VERSION in C, heapd.__version__ "
                                     "in Python) instead" % VERSION)
        with open(os.path.join(SOURCE_DIR, "CMakeLists.txt"), encoding="utf-8") as f:
            self.assertRegex(f.read(), r"project\(heapd VERSION %s\b" % re.escape(VERSION))


class LicenseTest(unittest.TestCase):
    def test_license_file_is_mit(self):
        with open(os.path.join(SOURCE_DIR, "LICENSE"), encoding="utf-8") as f:
            text = f.read()
        self.assertTrue(text.startswith("MIT License\n"))
        self.assertIn("Permission is hereby granted, free of charge", text)

    def test_no_other_license_is_named(self):
        files = source_files()
        self.assertGreater(len(files), 50)
        found = []
        for rel in files:
            if rel in LICENSE_ALLOWED:
                continue
            text = read_text(rel)
            if text is None:
                continue
            for m in SPDX.finditer(text):
                if m.group(1) != "MIT":
                    found.append("%s: SPDX-License-Identifier: %s" % (rel, m.group(1)))
            for m in OTHER_LICENSES.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                found.append("%s:%d: %s" % (rel, line, m.group(0)))
        self.assertEqual(found, [], "heapd is MIT-licensed (LICENSE); these name another license")

    def test_every_source_file_says_mit(self):
        # Every file of code, build or configuration says its license in its header (its first
        # five lines), as an SPDX line: a file added without one is caught here.
        missing = []
        for rel in source_files():
            if not SPDX_REQUIRED.search(rel) or SPDX_EXEMPT.search(rel):
                continue
            text = read_text(rel)
            if text is None:
                continue
            head = "\n".join(text.split("\n")[:5])
            m = SPDX.search(head)
            if not m or m.group(1) != "MIT":
                missing.append(rel)
        self.assertEqual(missing, [], "these files need an 'SPDX-License-Identifier: MIT' line in "
                         "their first five lines, in the file's comment style")

    def test_spdx_lines_say_mit(self):
        # Every source file carries an SPDX line (test_every_source_file_says_mit); each
        # must name MIT. This also proves the pattern matches the usual comment styles.
        for line, want in (("/* SPDX-License-Identifier: MIT */", "MIT"),
                           ("# SPDX-License-Identifier: MIT", "MIT"),
                           ("// SPDX-License-Identifier: GPL-2.0-only", "GPL-2.0-only")):
            self.assertEqual(SPDX.search(line).group(1), want)
        self.assertTrue(OTHER_LICENSES.search("Licensed under the Apache License, Version 2.0"))
        self.assertTrue(OTHER_LICENSES.search("GNU General Public License"))
        self.assertTrue(OTHER_LICENSES.search("SPDX-License-Identifier: BSD-3-Clause"))
        self.assertIsNone(OTHER_LICENSES.search("Permission is hereby granted, free of charge"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
