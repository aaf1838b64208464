#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""mkman.py: builds one man page from its Markdown source with pandoc (docs/man/CMakeLists.txt
runs it for each page).

The source is docs/man/NAME.SECTION.md. Before pandoc sees it, three placeholders are filled:

  @VERSION@       the version (project(VERSION) in the top CMakeLists.txt)
  @CONFIG_KEYS@   one entry per config key, generated from the daemon's key table as
                  `heapd --print-config-keys` prints it, with the prose of the comment above
                  the key in config/heapd.yaml. A key of the table without a comment there, or
                  a key in the file that the table does not know, stops the build: the page
                  cannot drift from the table.
  @PROTOCOL@      docs/PROTOCOL.md, its title dropped and its headings raised one level, so
                  heapd-protocol(7) is that document and not a second copy of it.

Then pandoc writes roff with the filter man.lua (tables become tagged paragraphs). The page's
date is the release date of VERSION in CHANGELOG.md ("unreleased" when it has none yet), so
the same source always gives the same page.
"""

import argparse
import re
import subprocess
import sys


def fail(msg):
    sys.stderr.write("mkman.py: %s\n" % msg)
    sys.exit(1)


def md_escape(text):
    """Text from a comment, made literal for pandoc's Markdown."""
    return re.sub(r"([\\`*_{}\[\]<>#|$~^@])", r"\\\1", text)


def read_keys(heapd):
    """The key table: a list of dicts, in table order."""
    try:
        out = subprocess.run([heapd, "--print-config-keys"], check=True, capture_output=True,
                             text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        fail("%s --print-config-keys failed: %s" % (heapd, e))
    lines = out.splitlines()
    header = lines[0].split("\t")
    keys = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    if not keys or "name" not in header:
        fail("%s --print-config-keys printed no keys" % heapd)
    return keys


def read_comments(path):
    """{key: [paragraph, ...]} from the comment block right above each `key:` line.

    A section ("tls:" with its keys indented under it) gives "tls.cert" for its indented
    "cert:"; the comment above the section line itself introduces the section and names no
    key of its own."""
    comments, block, section = {}, [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.lstrip().startswith("#"):
                block.append(line.lstrip()[1:].strip())
                continue
            m = re.match(r"(\s*)([A-Za-z0-9_]+):\s*(.*)$", line)
            if m:
                # An empty comment line ("#") separates paragraphs.
                paragraphs = " ".join(l if l else "\n" for l in block).split("\n")
                prose = [p.strip() for p in paragraphs if p.strip()]
                if m.group(1) and section:
                    comments[section + "." + m.group(2)] = prose
                elif not m.group(3):
                    section = m.group(2)  # a section opens; its keys follow, indented
                else:
                    section = None
                    comments[m.group(2)] = prose
            block = []
    return comments


def bounds(k):
    """How the table's bounds read for a key of this type."""
    t, lo, hi = k["type"], k["min"], k["max"]
    if t in ("an integer",) or t.startswith("a size") or t.startswith("a duration"):
        return "from %s to %s" % (lo, hi)
    if t == "a string":
        return "at most %s bytes" % hi
    if t == "a list of strings":
        return "at most %s items" % hi
    if t == "an octal mode":
        return "from 0 to 0%o" % int(hi)
    if t == "a name":
        return "one of " + ", ".join("`%s`" % v for v in k["values"].split(","))
    if t == "true or false":
        return ""
    if t == "three integers":
        return "each from %s to %s" % (lo, hi)
    if t == "a list of uids or user names, or off":
        return "at most %s items" % hi
    fail("no wording for the bounds of type \"%s\" (key %s): teach mkman.py:bounds" %
         (t, k["name"]))


def config_keys(heapd, config):
    keys = read_keys(heapd)
    comments = read_comments(config)
    names = [k["name"] for k in keys]
    unknown = sorted(set(comments) - set(names))
    if unknown:
        fail("%s sets keys the daemon's table does not have: %s" % (config, ", ".join(unknown)))
    out = []
    for k in keys:
        prose = comments.get(k["name"])
        if not prose:
            fail("key %s has no comment above it in %s: every key of the table is documented "
                 "there (it becomes heapd.yaml(5))" % (k["name"], config))
        facts = [k["type"][0].upper() + k["type"][1:]]
        b = bounds(k)
        if b:
            facts.append(b)
        facts.append("reloadable (SIGHUP)" if k["reload"] == "reload"
                     else "read at start-up only: a change needs a restart")
        if k["secret"] == "yes":
            facts.append("secret: never printed or logged")
        out.append("**%s**: `%s`\n" % (k["name"], k["default"]))
        out.append(":   %s.\n" % "; ".join(facts))
        for p in prose:
            out.append("\n    %s\n" % md_escape(p))
        out.append("\n")
    return "".join(out)


def protocol(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = text.split("\n")
    if not lines[0].startswith("# "):
        fail("%s does not start with a title line" % path)
    body = "\n".join(lines[1:])
    # Raise every heading one level: the document's sections become the page's sections,
    # in capitals as man pages write them.
    body = re.sub(r"^#(#+ )", r"\1", body, flags=re.M)
    return re.sub(r"^# (.*)$", lambda m: "# " + m.group(1).upper(), body, flags=re.M)


def release_date(changelog, version):
    with open(changelog, encoding="utf-8") as f:
        m = re.search(r"^## \[%s\] - (\d{4}-\d\d-\d\d)" % re.escape(version), f.read(), re.M)
    return m.group(1) if m else "unreleased"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pandoc", required=True)
    ap.add_argument("--filter", required=True, help="man.lua")
    ap.add_argument("--version", required=True)
    ap.add_argument("--changelog", required=True)
    ap.add_argument("--heapd", help="the daemon, for @CONFIG_KEYS@")
    ap.add_argument("--config", help="config/heapd.yaml, for @CONFIG_KEYS@")
    ap.add_argument("--protocol", help="docs/PROTOCOL.md, for @PROTOCOL@")
    ap.add_argument("--markdown-out", help="also write the filled-in Markdown here")
    a = ap.parse_args()

    m = re.match(r"(.+)\.([1-9])\.md$", a.source.rsplit("/", 1)[-1])
    if not m:
        fail("%s: expected a name such as heapd.8.md" % a.source)
    name, section = m.groups()
    with open(a.source, encoding="utf-8") as f:
        text = f.read()
    text = text.replace("@VERSION@", a.version)
    if "@CONFIG_KEYS@" in text:
        if not (a.heapd and a.config):
            fail("%s needs --heapd and --config" % a.source)
        text = text.replace("@CONFIG_KEYS@", config_keys(a.heapd, a.config))
    if "@PROTOCOL@" in text:
        if not a.protocol:
            fail("%s needs --protocol" % a.source)
        text = text.replace("@PROTOCOL@", protocol(a.protocol))
    if a.markdown_out:
        with open(a.markdown_out, "w", encoding="utf-8") as f:
            f.write(text)

    cmd = [a.pandoc, "--standalone", "--from", "markdown", "--to", "man",
           "--lua-filter", a.filter,
           "--metadata", "title=" + name.upper(), "--metadata", "section=" + section,
           "--metadata", "header=heapd manual", "--metadata", "footer=heapd " + a.version,
           "--metadata", "date=" + release_date(a.changelog, a.version),
           "--output", a.out]
    r = subprocess.run(cmd, input=text, text=True, capture_output=True)
    if r.returncode != 0 or r.stderr.strip():
        fail("pandoc failed on %s:\n%s" % (a.source, r.stderr))


if __name__ == "__main__":
    main()
