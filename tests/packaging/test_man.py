# SPDX-License-Identifier: MIT
"""test_man.py: the man pages document everything the programs offer, and render cleanly.

The lists come from the programs themselves, so a new heapctl command, a new option or a new
config key without its man page entry fails here:
  heapctl(1)      every command and shell command (`heapctl --json help`), every gc and trace
                  subcommand (`heapctl --json help gc`), every long option and exit code
                  (`heapctl --help`) has a tagged paragraph of its own.
  heapd(8)        every long option of `heapd --help`.
  heapd.yaml(5)   every key of `heapd --print-config-keys`, with its default.
  heapd-protocol  every status code of the engine's error list.
and every page renders with groff -ww and `man --warnings` silent, at 80 columns (and no
wider, but for the protocol's hex dumps), with a NAME section that man-db's lexgrog (whatis) can read. The pages are the built ones
(<build>/man), the files `cmake --install` and the package install.
"""

import json
import os
import re
import shutil
import subprocess
import unittest

MAN_DIR = os.environ["HEAPD_MAN_DIR"]
HEAPD = os.environ["HEAPD_BIN"]
HEAPCTL = os.environ["HEAPCTL_BIN"]
SOURCE_DIR = os.environ["HEAPD_SOURCE_DIR"]
PAGES = ["heapd.8", "heapctl.1", "heapd.yaml.5", "heapd-protocol.7"]


def run(*cmd, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, **(env or {})))
    return r


def page_path(page):
    return os.path.join(MAN_DIR, page)


def roff_sections(page):
    """{SECTION: [tag, ...]}: the tag line of every .TP paragraph, by section, as plain text."""
    with open(page_path(page), encoding="utf-8") as f:
        lines = f.read().split("\n")
    sections, current = {}, None
    for i, line in enumerate(lines):
        if line.startswith(".SH "):
            current = line[4:].strip().strip('"')
            sections.setdefault(current, [])
        elif line == ".TP" and current is not None and i + 1 < len(lines):
            sections[current].append(roff_text(lines[i + 1]))
    return sections


def roff_text(s):
    """A roff line as the reader sees it: no font changes, escapes resolved."""
    s = re.sub(r"\\f(\[[A-Z]*\]|[A-Z])", "", s)
    s = s.replace("\\-", "-").replace("\\[dq]", '"').replace("\\[aq]", "'")
    s = s.replace("\\[lq]", '"').replace("\\[rq]", '"').replace("\\&", "").replace("\\ ", " ")
    return s.replace("\\\\", "\\")


def tag_words(tags):
    """Each tag's entries ("incref OBJ [N], decref OBJ [N]" has two) as their first word and
    first two words: "incref", "decref"; "gc show"."""
    words = set()
    for tag in tags:
        for part in tag.split(", "):
            w = part.split()
            if w:
                words.add(w[0])
                words.add(" ".join(w[:2]))
    return words


def rendered(page, width=80):
    r = run("man", "-l", page_path(page), env={"MANWIDTH": str(width), "MANPAGER": "cat",
                                                "LC_ALL": "C.UTF-8"})
    return r.stdout


class RenderTest(unittest.TestCase):
    def test_pages_exist(self):
        for page in PAGES:
            self.assertTrue(os.path.isfile(page_path(page)), page + " was not built")

    def test_groff_has_no_warnings(self):
        for page in PAGES:
            r = run("groff", "-man", "-ww", "-z", "-Tutf8", page_path(page))
            self.assertEqual((r.returncode, r.stderr), (0, ""), page)

    def test_man_has_no_warnings_at_80_columns(self):
        for page in PAGES:
            r = run("man", "--warnings", "-l", page_path(page),
                    env={"MANWIDTH": "80", "MANPAGER": "cat", "LC_ALL": "C.UTF-8"})
            self.assertEqual(r.returncode, 0, page)
            self.assertEqual(r.stderr, "", page)
            self.assertGreater(len(r.stdout.splitlines()), 30, page)
            # heapd-protocol(7) is docs/PROTOCOL.md, whose hex dumps are wider than a
            # terminal; the pages written for man must fit one.
            if page != "heapd-protocol.7":
                too_wide = [l for l in r.stdout.splitlines() if len(l) > 80]
                self.assertEqual(too_wide, [], page)

    def test_whatis_entry(self):
        lexgrog = shutil.which("lexgrog")
        if not lexgrog:
            self.skipTest("lexgrog (man-db) is not installed")
        for page in PAGES:
            r = run(lexgrog, page_path(page))
            name = page.rsplit(".", 1)[0]
            self.assertEqual(r.returncode, 0, page + ": " + r.stdout + r.stderr)
            self.assertIn('"%s - ' % name, r.stdout, page)

    def test_header_names_the_version(self):
        version = os.environ["HEAPD_VERSION"]
        for page in PAGES:
            with open(page_path(page), encoding="utf-8") as f:
                th = [l for l in f if l.startswith(".TH ")]
            self.assertEqual(len(th), 1, page)
            self.assertIn('"heapd %s"' % version, th[0], page)


class HeapctlPageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sections = roff_sections("heapctl.1")
        cls.all_tags = tag_words(t for tags in cls.sections.values() for t in tags)
        r = run(HEAPCTL, "--json", "help")
        assert r.returncode == 0, r.stderr
        cls.commands = json.loads(r.stdout)["commands"]
        cls.usage = run(HEAPCTL, "--help").stdout

    def test_command_list_is_read(self):
        # A sanity floor: the parser must find the commands, or every test below is empty.
        names = [c["name"] for c in self.commands]
        for name in ("ping", "stats", "gc", "shell", "alloc", "link"):
            self.assertIn(name, names)

    def test_every_command_has_an_entry(self):
        top = tag_words(self.sections.get("COMMANDS", []))
        shell = tag_words(self.sections.get("SHELL COMMANDS", []))
        missing = [c["name"] for c in self.commands
                   if c["name"] not in (shell if c["shell_only"] else top)]
        self.assertEqual(missing, [], "commands with no entry in heapctl(1) (docs/man/heapctl.1.md, "
                                      "section COMMANDS or SHELL COMMANDS)")

    def test_every_subcommand_has_an_entry(self):
        checked = 0
        for c in self.commands:
            r = run(HEAPCTL, "--json", "help", c["name"])
            self.assertEqual(r.returncode, 0, r.stderr)
            subs = json.loads(r.stdout).get("subcommands", [])
            if not subs:
                continue
            section = "%s SUBCOMMANDS" % c["name"].upper()
            tags = tag_words(self.sections.get(section, []))
            missing = [s["name"] for s in subs if "%s %s" % (c["name"], s["name"]) not in tags]
            self.assertEqual(missing, [], "%s subcommands with no entry in heapctl(1) section %s"
                             % (c["name"], section))
            checked += len(subs)
        self.assertGreater(checked, 10)

    def test_quit_has_an_entry(self):
        self.assertIn("quit", self.usage)  # listed by --help, not by the command table
        self.assertIn("quit", tag_words(self.sections.get("SHELL COMMANDS", [])))

    def test_every_option_has_an_entry(self):
        options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", self.usage.split("Commands:")[0]))
        self.assertGreater(len(options), 5)
        tags = " ".join(self.sections.get("OPTIONS", []))
        missing = sorted(o for o in options if not re.search(r"(?<![\w-])%s\b" % o, tags))
        self.assertEqual(missing, [], "heapctl options with no entry in heapctl(1)")

    def test_every_exit_code_has_an_entry(self):
        codes = re.findall(r"^\s+(\d+)\s+\S", self.usage.split("Exit codes:")[1], re.M)
        self.assertGreater(len(codes), 3)
        tags = set(self.sections.get("EXIT STATUS", []))
        self.assertEqual([c for c in codes if c not in tags], [])

    def test_environment(self):
        tags = self.sections.get("ENVIRONMENT", [])
        for var in re.findall(r"\$(HEAPD_[A-Z_]+)", self.usage):
            self.assertIn(var, tags)


class HeapdPageTest(unittest.TestCase):
    def test_every_option_has_an_entry(self):
        usage = run(HEAPD, "--help").stdout
        options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", usage))
        self.assertGreater(len(options), 3)
        tags = " ".join(roff_sections("heapd.8").get("OPTIONS", []))
        missing = sorted(o for o in options if not re.search(r"(?<![\w-])%s\b" % o, tags))
        self.assertEqual(missing, [], "heapd options with no entry in heapd(8)")


class ConfigPageTest(unittest.TestCase):
    def test_every_key_with_its_default(self):
        out = run(HEAPD, "--print-config-keys").stdout.splitlines()
        header = out[0].split("\t")
        keys = [dict(zip(header, l.split("\t"))) for l in out[1:]]
        self.assertGreater(len(keys), 10)
        tags = roff_sections("heapd.yaml.5").get("KEYS", [])
        self.assertEqual([t.split(":")[0] for t in tags], [k["name"] for k in keys],
                         "heapd.yaml(5) lists the keys of the table, in its order")
        text = rendered("heapd.yaml.5", width=200)
        for k in keys:
            self.assertIn("%s: %s" % (k["name"], k["default"]), text)

    def test_shipped_file_holds_the_defaults(self):
        # config/heapd.yaml says each value it shows is the built-in default; the page's
        # prose comes from its comments, so both must describe the same settings.
        shipped = run(HEAPD, "--check-config", os.path.join(SOURCE_DIR, "config", "heapd.yaml"))
        defaults = run(HEAPD, "--check-config", "/dev/null")
        self.assertEqual(shipped.returncode, 0, shipped.stderr)
        self.assertEqual(defaults.returncode, 0, defaults.stderr)
        self.assertEqual(shipped.stdout, defaults.stdout)


class ProtocolPageTest(unittest.TestCase):
    def test_every_status_code(self):
        with open(os.path.join(SOURCE_DIR, "src", "heap", "heap.h"), encoding="utf-8") as f:
            names = re.findall(r"XX\((E[A-Z]+),\s*\d+,", f.read())
        self.assertGreater(len(names), 20)
        text = rendered("heapd-protocol.7", width=200)
        section = text[text.index("\nSTATUS CODES\n"):]
        section = section[:section.index("\nEXAMPLE EXCHANGE\n")]
        self.assertEqual([n for n in names if not re.search(r"\b%s\b" % n, section)], [])

    def test_every_op_of_the_proto(self):
        with open(os.path.join(SOURCE_DIR, "proto", "heapd.proto"), encoding="utf-8") as f:
            proto = f.read()
        request = re.search(r"message Request \{(.*?)\n\}", proto, re.S).group(1)
        ops = re.findall(r"^\s+\w+ (\w+) = (\d+)\s*(?:\[[^\]]*\])?\s*;", request, re.M)
        ops = [name for name, num in ops if name != "id"]
        self.assertGreater(len(ops), 40)
        text = rendered("heapd-protocol.7", width=200)
        self.assertEqual([op for op in ops if not re.search(r"\b%s \(\d+[);]" % op, text)], [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
