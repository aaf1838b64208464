# SPDX-License-Identifier: MIT
"""test_package.py: the Debian packages build, pass lintian, install, run and purge, and
docs/DEPLOYMENT.md works as written.

1. A copy of the source tree (common.source_files: what git tracks, plus changes not yet
   committed) is built with `dpkg-buildpackage -us -uc -b`, as the guide says, with
   DEB_BUILD_OPTIONS=nocheck (this test is part of the suite that would run) and
   DPKG_GENSYMBOLS_CHECK_LEVEL=4 (a symbol added to libheapdclient without its line in
   debian/libheapdclient1.symbols fails the build).
2. lintian on the result: no error, and no warning but those listed in LINTIAN_ACCEPTED with
   the reason each stays.
3. The packages hold what they should (the files the man pages and the guide name, the
   conffile, the symbols file).
4. The guide is walked in a container: a copy-on-write overlay of this machine's own root on
   a tmpfs, booted with systemd-nspawn (systemd as PID 1, journald, a private network), so
   nothing is installed on the machine itself and a fixed port inside cannot clash with
   anything outside. Every ```sh block of docs/DEPLOYMENT.md runs in order in one bash
   (set -euo pipefail), as root, from a directory holding the .deb files; a block preceded by
   `<!-- not run: WHY -->` is skipped, every other one carries `<!-- step: NAME -->`. Around
   the steps, HOOKS check what the guide only says: the installed files and their modes,
   `heapd --check-config /etc/heapd/heapd.yaml`, `systemd-analyze verify` on the installed
   units, the daemon's user and groups, client round trips from heapctl, Python and C
   against the daemon started from the installed units, who is refused, what the upgrade
   keeps and what the purge removes.

The walk's script is left in <build>/deployment-walk.sh, to read after a failure.

Skipped, with the reason, only when a tool is missing (dpkg-buildpackage, debhelper, lintian;
systemd-nspawn for the walk, which also needs root). .ci/setup installs them.
"""

import fcntl
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SOURCE_DIR, source_files  # noqa: E402

VERSION = os.environ["HEAPD_VERSION"]
MAN_DIR = os.environ.get("HEAPD_MAN_DIR", "")
GUIDE = os.path.join(SOURCE_DIR, "docs", "DEPLOYMENT.md")
PACKAGES = ["heapd", "libheapdclient1", "libheapdclient-dev", "python3-heapd"]

# Warnings lintian gives that stay, and why.
LINTIAN_ACCEPTED = {
    # heapd is packaged by its authors, not uploaded to Debian: there is no ITP bug to close.
    "initial-upload-closes-no-bugs",
}

# Shell run around the guide's steps, inside the container (bash, set -euo pipefail: so no
# `! cmd` and no `a && b` as assertions, which set -e ignores). $OUT holds the step's output.
PRELUDE = r"""
fail() { echo "FAILED: $*"; return 1; }
not() { if "$@" >/dev/null 2>&1; then fail "should have failed: $*"; fi; }
refused() { local want=$1 rc=0; shift; "$@" >/dev/null 2>&1 || rc=$?
            [ "$rc" -eq "$want" ] || fail "expected exit $want from: $* (got $rc)"; }
# has REGEX CMD...: CMD succeeds and prints a line matching REGEX (output captured first:
# `cmd | grep -q` fails under pipefail when grep stops reading early).
has() { local re=$1 out; shift; out=$("$@" 2>&1) || fail "$* exited $?"
        grep -Eq -- "$re" <<<"$out" || fail "no line matching '$re' from: $*"; }
journal_has() { local out; for _ in $(seq 100); do
                    out=$(journalctl -u heapd.service --no-pager -o cat)
                    grep -Fq -- "$1" <<<"$out" && return 0; sleep 0.05; done
                fail "not in the journal: $1"; }
mode_of() { stat -c '%a %U %G' "$1"; }
# systemctl reload returns before heapd has applied the file: wait for its log line.
reloads() { journalctl -u heapd.service --no-pager -o cat | grep -c 'config reloaded from' || true; }
wait_reload() { for _ in $(seq 200); do [ "$(reloads)" -gt "$1" ] && return 0; sleep 0.05; done
                fail "heapd logged no reload"; }
"""

HOOKS = {
    "install": {
        "before": r"""
not dpkg -s heapd   # a fresh root: heapd is not installed yet
""",
        "after": r"""
for p in heapd libheapdclient1 python3-heapd; do
    [ "$(dpkg-query -W -f='${Version} ${db:Status-Abbrev}' $p)" = "@VERSION@-1 ii " ] || fail "$p"
done
getent group heapd >/dev/null
getent group heapd-config >/dev/null
[ "$(mode_of /etc/heapd/heapd.yaml)" = "640 root heapd-config" ] || fail "config mode"
[ "$(mode_of /run/heapd/heapd.sock)" = "660 root heapd" ] || fail "socket mode"
systemctl is-enabled heapd.socket heapd.service >/dev/null
# The installed config checks, and names the addresses heapd.socket listens on.
has '^unix_socket: "/run/heapd/heapd.sock"$' heapd --check-config /etc/heapd/heapd.yaml
has '^listen: \["127.0.0.1:7420"\]$' heapd --check-config /etc/heapd/heapd.yaml
has '127\.0\.0\.1:7420 \(Stream\)' systemctl show -p Listen heapd.socket
has '/run/heapd/heapd\.sock \(Stream\)' systemctl show -p Listen heapd.socket
# The installed units verify, their Documentation= man pages included.
systemd-analyze verify /lib/systemd/system/heapd.service /lib/systemd/system/heapd.socket
for page in 8:heapd 1:heapctl 5:heapd.yaml 7:heapd-protocol; do
    man -w "${page%%:*}" "${page#*:}" >/dev/null
done
for f in @FILES@; do [ -e "$f" ] || fail "heapd(8) FILES names $f, which is not there"; done
""",
    },
    "check": {
        "after": r"""
grep -q '^PONG from heapd @VERSION@ at tcp://127.0.0.1:7420' "$OUT"
# The daemon: a dynamic user (not root) with the group that reads the config.
pid=$(systemctl show -p MainPID --value heapd.service)
[ "$pid" -gt 0 ]
[ "$(awk '/^Uid:/ {print $2}' /proc/$pid/status)" -ne 0 ] || fail "heapd runs as root"
gid=$(getent group heapd-config | cut -d: -f3)
grep -Eq "^Groups:.*\b$gid\b" /proc/$pid/status
journal_has 'listening on unix /run/heapd/heapd.sock (socket activation)'
""",
    },
    "clients": {
        "after": r"""
grep -qx 'collected 1' "$OUT"
grep -qx 'heapd @VERSION@ answers at tcp://127.0.0.1:7420' "$OUT"
# heapd-protocol(7)'s way to a client in another language, from the installed .proto.
(cd /tmp && protoc -I/usr/share/heapd --python_out=. heapd.proto && test -s heapd_pb2.py)
# The packaged module, with its C codec.
has '^@VERSION@ /usr/lib/python3/dist-packages/heapd/__init__.py c$' \
    python3 -c 'import heapd; print(heapd.__version__, heapd.__file__, heapd.implementation)'
""",
    },
    "configure": {
        "before": "n=$(reloads)",
        "after": r"""
wait_reload $n
has '^session_max_bytes: 64MiB$' heapd --check-config /etc/heapd/heapd.yaml
journal_has 'config reload: session_max_bytes: 256MiB -> 64MiB'
""",
    },
    "group": {
        "before": r"""
useradd --create-home alice
useradd --create-home bob
""",
        "after": r"""
grep -q '^PONG from heapd .* at unix:/run/heapd/heapd.sock' "$OUT"
# Outside the group, the socket refuses (heapctl: cannot connect).
refused 3 runuser -u bob -- heapctl --connect unix:/run/heapd/heapd.sock ping
""",
    },
    "unix-only": {
        "after": r"""
grep -q '^PONG from heapd .* at unix:/run/heapd/heapd.sock' "$OUT"
refused 3 heapctl --connect tcp://127.0.0.1:7420 ping
[ "$(mode_of /run/heapd/heapd.sock)" = "660 root heapd" ] || fail "socket mode"
runuser -u alice -- heapctl --connect unix:/run/heapd/heapd.sock ping >/dev/null
""",
    },
    "tokens": {
        "before": "n=$(reloads)",
        "after": r"""
wait_reload $n
[ -n "$TOKEN" ]
refused 5 runuser -u alice -- heapctl ping  # root would be an admin by its uid
refused 5 env HEAPD_TOKEN=wrong heapctl ping  # a wrong token is refused even from root
HEAPD_TOKEN="$TOKEN" runuser -u alice -- heapctl ping >/dev/null  # environment kept
has '^tokens: \["<redacted>"\]$' heapd --check-config /etc/heapd/heapd.yaml
journal_has 'hello refused: EAUTH'
not grep -qF "$TOKEN" <(journalctl -u heapd.service --no-pager -o cat)   # never logged
""",
    },
    "admin": {
        "before": "n=$(reloads)",
        "after": "wait_reload $n",
    },
    "admin-use": {
        "after": r"""
grep -q 'SESSION' "$OUT"
grep -q 'sessions' "$OUT"
refused 5 env HEAPD_TOKEN="$TOKEN" runuser -u alice -- heapctl server
not grep -qF "$ADMIN_TOKEN" <(journalctl -u heapd.service --no-pager -o cat)
""",
    },
    "logs": {
        "after": r"""
grep -q 'config reload' "$OUT"
""",
    },
    "persist": {
        "after": r"""
grep -qx '1 object kept' "$OUT"
grep -qx 'data_dir: "/var/lib/heapd"' "$OUT"
journal_has 'restored 1 session from /var/lib/heapd'
# The state directory: the dynamic user's, 0700; the session ended, so its file went too.
[ "$(stat -L -c '%a %U' /var/lib/heapd)" = "700 _heapd" ] || fail "state directory mode"
[ -z "$(ls -A /var/lib/heapd)" ] || fail "snapshots left: $(ls -A /var/lib/heapd)"
""",
    },
    "upgrade": {
        "before": r"""
sum_before=$(md5sum < /etc/heapd/heapd.yaml)
pid_before=$(systemctl show -p MainPID --value heapd.service)
# A session kept across the upgrade's restart (section 11's data_dir is set).
kept=$(printf 'alloc a size=5 data=hello\nsession\n' | HEAPD_TOKEN=$TOKEN heapctl --keep shell |
       awk '/^session /{print "--session " $2 " --resume " $4}')
[ -n "$kept" ]
""",
        "after": r"""
[ "$(md5sum < /etc/heapd/heapd.yaml)" = "$sum_before" ] || fail "the upgrade changed the config"
[ "$(mode_of /etc/heapd/heapd.yaml)" = "640 root heapd-config" ] || fail "config mode"
[ -f /etc/systemd/system/heapd.socket.d/unix-only.conf ]
pid_after=$(systemctl show -p MainPID --value heapd.service)
[ "$pid_after" -gt 0 ]
[ "$pid_after" -ne "$pid_before" ] || fail "the upgrade did not restart heapd"
grep -qx active "$OUT"
has '"objects":1,' env HEAPD_TOKEN="$TOKEN" heapctl --json $kept stats
""",
    },
    "remove": {
        "after": r"""
for p in heapd libheapdclient1 libheapdclient-dev python3-heapd; do not dpkg -s $p; done
for f in /etc/heapd /usr/bin/heapd /lib/systemd/system/heapd.service /run/heapd/heapd.sock \
         /etc/systemd/system/sockets.target.wants/heapd.socket \
         /etc/systemd/system/multi-user.target.wants/heapd.service; do
    [ ! -e "$f" ] || fail "$f is still there"
done
[ ! -e /var/lib/heapd ] && [ ! -e /var/lib/private/heapd ] || fail "the state directory stayed"
not pgrep -x heapd
getent group heapd >/dev/null   # system groups stay
""",
    },
}


def have(*tools):
    return [t for t in tools if not shutil.which(t)]


def run(cmd, timeout=300, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def guide_blocks():
    """[(step or None, line, text)] for every ```sh block of the guide, in order."""
    with open(GUIDE, encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks, marker = [], None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("<!--"):
            comment = line
            while "-->" not in comment and i + 1 < len(lines):
                i += 1
                comment += " " + lines[i].strip()
            m = re.match(r"<!--\s*(step|not run):\s*(.*?)\s*-->$", comment)
            marker = (m.group(1), m.group(2)) if m else None
        elif line.startswith("```sh"):
            start = i + 1
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            if marker is None:
                raise AssertionError("DEPLOYMENT.md:%d: a ```sh block needs <!-- step: NAME --> "
                                     "or <!-- not run: WHY --> just above it" % start)
            kind, value = marker
            if kind == "not run" and not value:
                raise AssertionError("DEPLOYMENT.md:%d: say why the block is not run" % start)
            blocks.append((value if kind == "step" else None, start, "\n".join(lines[start:i])))
            marker = None
        elif line.strip():
            marker = None
        i += 1
    return blocks


def heapd8_files():
    """The paths the FILES section of the built heapd(8) names."""
    with open(os.path.join(MAN_DIR, "heapd.8"), encoding="utf-8") as f:
        roff = f.read()
    section = roff.split('.SH FILES', 1)[1].split("\n.SH ", 1)[0]
    lines = section.split("\n")
    tags = [lines[i + 1] for i, l in enumerate(lines) if l == ".TP" and i + 1 < len(lines)]
    paths = []
    for tag in tags:
        tag = re.sub(r"\\f(\[[A-Z]*\]|[A-Z])", "", tag).replace("\\-", "-")
        paths += [p.strip() for p in tag.split(",")]
    return paths


def walk_script(blocks):
    """The bash script that walks the guide's steps with their hooks."""
    files = " ".join("'%s'" % f for f in heapd8_files())
    # Each step's output goes to $OUT, then to the log; when a step's command fails, the ERR
    # trap puts the output back on the terminal and shows what the step printed.
    # set -E: the trap also fires for a command failing inside a function (sudo, below).
    script = ["set -Eeuo pipefail", PRELUDE, "exec 3>&1 4>&2", "STEP=start OUT= IN_STEP=",
              "trap 'rc=$?; exec 1>&3 2>&4; [ -z \"$IN_STEP\" ] || tail -n 80 \"$OUT\"; "
              "echo \"FAILED: step $STEP: $BASH_COMMAND (exit $rc)\"' ERR",
              # No sudo in the container: as root, `sudo [-u USER] CMD` is runuser or CMD.
              "command -v sudo >/dev/null || sudo() { if [ \"$1\" = -u ]; then "
              "local u=$2; shift 2; runuser -u \"$u\" -- \"$@\"; else \"$@\"; fi; }",
              # apt asks before removing; the reader answers yes.
              "echo 'APT::Get::Assume-Yes \"true\";' > /etc/apt/apt.conf.d/90heapd-test-yes",
              # Speed only: no man-db index rebuild on each install (man -w finds pages without).
              "echo 'man-db man-db/auto-update boolean false' | debconf-set-selections",
              "cd /root/debs"]
    for step, line, text in blocks:
        if not step:
            continue
        hooks = HOOKS.get(step, {})
        script.append("STEP=%s; OUT=/tmp/step-%s.out; echo '::: step %s "
                      "(DEPLOYMENT.md:%d)'" % (step, step, step, line))
        script.append(hooks.get("before", ""))
        script.append('IN_STEP=1; exec >"$OUT" 2>&1')
        script.append(text)
        script.append('exec 1>&3 2>&4; IN_STEP=; cat "$OUT"')
        script.append(hooks.get("after", "").replace("@VERSION@", VERSION)
                      .replace("@FILES@", files))
    script.append("echo '::: walked'")
    return "\n".join(script) + "\n"


def kill_recorded(cdir):
    """Kills a container by the pids its run wrote down: systemd-nspawn, and the container's
    systemd, which outlives a killed nspawn (killing a PID namespace's init ends every process
    in it). Each pid is checked to still be that process, so a reused pid is left alone."""
    ns_self = os.readlink("/proc/self/ns/pid")
    for name, check in (("nspawn.pid", "systemd-nspawn"), ("pid1.pid", "systemd")):
        try:
            with open(os.path.join(cdir, name)) as f:
                pid = int(f.read())
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
            if name == "pid1.pid" and os.readlink("/proc/%d/ns/pid" % pid) == ns_self:
                continue  # not a container's init
            if check.encode() in os.path.basename(argv[0]):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


def sweep_stale_runs():
    """Cleans up after runs that were killed (a ctest timeout): their container, its mounts and
    their files. A run holds the lock in its directory while it lives, so a directory whose
    lock can be taken belongs to a dead run; one still running is left alone."""
    for d in glob.glob(os.path.join(tempfile.gettempdir(), "heapd-deb-*")):
        try:
            lock = open(os.path.join(d, "lock"), "a")
        except OSError:
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # alive
            root = os.path.join(d, "container", "root")
            kill_recorded(os.path.join(d, "container"))
            for target in (root, os.path.join(d, "container", "rw")):
                if os.path.ismount(target):
                    run(["umount", "--lazy", target], timeout=30)
            shutil.rmtree(d, ignore_errors=True)


class Build:
    """The packages, built once for all the tests."""
    done = False
    error = None

    @classmethod
    def get(cls):
        if not cls.done:
            cls.done = True
            try:
                cls._build()
            except Exception as e:  # reported by each test that needs the packages
                cls.error = e
        if cls.error:
            raise cls.error
        return cls

    @classmethod
    def _build(cls):
        sweep_stale_runs()
        cls.tmp = tempfile.mkdtemp(prefix="heapd-deb-")
        # Held while this run lives: a later run that can take it knows this one is dead.
        cls.lock = open(os.path.join(cls.tmp, "lock"), "w")
        fcntl.flock(cls.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        src = os.path.join(cls.tmp, "heapd-" + VERSION)
        for rel in source_files():
            dst = os.path.join(src, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            path = os.path.join(SOURCE_DIR, rel)
            if os.path.islink(path):
                os.symlink(os.readlink(path), dst)
            else:
                shutil.copy2(path, dst)
        env = dict(os.environ, DEB_BUILD_OPTIONS="nocheck parallel=%d" % min(os.cpu_count(), 2),
                   DPKG_GENSYMBOLS_CHECK_LEVEL="4")
        for var in ("CFLAGS", "LDFLAGS", "MAKEFLAGS", "MFLAGS", "DESTDIR", "PYTHONPATH"):
            env.pop(var, None)
        t0 = time.monotonic()
        r = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=env, timeout=900)
        cls.build_seconds = time.monotonic() - t0
        cls.log = r.stdout + r.stderr
        if r.returncode != 0:
            raise AssertionError("dpkg-buildpackage failed:\n" + cls.log[-6000:])
        cls.debs = {}
        for deb in glob.glob(os.path.join(cls.tmp, "*.deb")):
            name = os.path.basename(deb).split("_")[0]
            cls.debs[name] = deb
        cls.changes = glob.glob(os.path.join(cls.tmp, "*.changes"))[0]
        # lintian takes a while: it runs while the guide is walked (test_4 collects it).
        cls.lintian = subprocess.Popen(["lintian", "--tag-display-limit", "0", cls.changes],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @classmethod
    def cleanup(cls):
        if getattr(cls, "lintian", None) and cls.lintian.poll() is None:
            cls.lintian.kill()
            cls.lintian.communicate()
        if getattr(cls, "tmp", None):
            shutil.rmtree(cls.tmp, ignore_errors=True)
            cls.lock.close()


class Container:
    """A throwaway root: an overlay of / on a tmpfs, booted with systemd-nspawn."""

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "container")
        self.tmpfs = os.path.join(self.dir, "rw")
        self.root = os.path.join(self.dir, "root")
        self.proc = None
        self.pid1 = None
        self.mounted = []

    def start(self):
        os.makedirs(self.tmpfs)
        os.makedirs(self.root)
        self._mount(["-t", "tmpfs", "-o", "size=2g", "heapd-test", self.tmpfs])
        os.makedirs(os.path.join(self.tmpfs, "upper"))
        os.makedirs(os.path.join(self.tmpfs, "work"))
        self._mount(["-t", "overlay", "-o", "lowerdir=/,upperdir=%s/upper,workdir=%s/work"
                     % (self.tmpfs, self.tmpfs), "heapd-test", self.root])
        # The walk starts on a machine without heapd: a config the host may have (left by a
        # manual install) would make dpkg ask about its conffile. Removed in the overlay only.
        shutil.rmtree(os.path.join(self.root, "etc", "heapd"), ignore_errors=True)
        self.log = open(os.path.join(self.dir, "boot.log"), "w+")
        # --keep-unit and --register=no: no systemd or machined is needed on the host.
        # --unit=basic.target: systemd, journald and the sockets; not the host's services.
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--directory", self.root,
             "--machine", "heapd-test-%d" % os.getpid(), "--register=no", "--keep-unit",
             "--link-journal=no", "--private-network", "--console=pipe", "--boot",
             "--", "--unit=basic.target"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        with open(os.path.join(self.dir, "nspawn.pid"), "w") as f:
            f.write(str(self.proc.pid))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None and not self.pid1:
            self.pid1 = self._child_systemd()
            time.sleep(0.05)
        if not self.pid1:
            raise AssertionError("the container did not start:\n" + self.boot_log())
        with open(os.path.join(self.dir, "pid1.pid"), "w") as f:
            f.write(str(self.pid1))
        # Until systemd has its private socket up, systemctl cannot ask; then it waits for
        # the boot to finish.
        while True:
            r = self.sh("systemctl is-system-running --wait", timeout=90)
            if r.stdout.strip() in ("running", "degraded"):
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError("the container did not boot: %s%s\n%s"
                                     % (r.stdout, r.stderr, self.boot_log()))
            time.sleep(0.1)

    def _child_systemd(self):
        try:
            with open("/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)) as f:
                children = f.read().split()
        except OSError:
            return None
        for pid in children:
            try:
                with open("/proc/%s/comm" % pid) as f:
                    if f.read().strip() == "systemd":
                        return int(pid)
            except OSError:
                pass
        return None

    def _mount(self, args):
        r = run(["mount"] + args, timeout=30)
        if r.returncode != 0:
            raise AssertionError("mount %s: %s" % (" ".join(args), r.stderr))
        self.mounted.append(args[-1])

    def boot_log(self):
        self.log.seek(0)
        return self.log.read()[-4000:]

    def sh(self, script, timeout=300):
        """Runs a bash script inside, as root in /root, with a clean environment."""
        return run(["nsenter", "--target", str(self.pid1), "--mount", "--uts", "--ipc",
                    "--net", "--pid", "--", "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME=/root", "LANG=C.UTF-8", "TERM=dumb",
                    "bash", "-c", "cd /root && " + script], timeout=timeout)

    def path(self, inside):
        return os.path.join(self.root, inside.lstrip("/"))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                kill_recorded(self.dir)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        for target in reversed(self.mounted):
            if run(["umount", target], timeout=30).returncode != 0:
                run(["umount", "--lazy", target], timeout=30)
        self.mounted = []


class PackageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        missing = have("dpkg-buildpackage", "dh", "dh_python3", "lintian")
        if missing:
            raise unittest.SkipTest("not installed: %s (apt-get install dpkg-dev debhelper "
                                    "dh-python lintian, or run .ci/setup)" % ", ".join(missing))

    @classmethod
    def tearDownClass(cls):
        Build.cleanup()

    def test_1_packages(self):
        b = Build.get()
        for name in PACKAGES:
            self.assertIn(name, b.debs, "not built: " + name)
            fields = run(["dpkg-deb", "--field", b.debs[name], "Version", "Architecture"]).stdout
            self.assertIn("Version: %s-1\n" % VERSION, fields)
        print("dpkg-buildpackage: %.1f s" % b.build_seconds, file=sys.stderr)

    def test_2_contents(self):
        b = Build.get()

        def files(name):
            # "-rw-r--r-- root/root 1234 2026-12-01 12:00 ./path [-> target]"
            out = run(["dpkg-deb", "--contents", b.debs[name]]).stdout
            return {l.split()[5].lstrip(".") for l in out.splitlines() if not l.startswith("d")}

        heapd = files("heapd")
        for f in ["/usr/bin/heapd", "/usr/bin/heapctl", "/etc/heapd/heapd.yaml",
                  "/lib/systemd/system/heapd.service", "/lib/systemd/system/heapd.socket",
                  "/usr/lib/sysusers.d/heapd.conf", "/usr/share/heapd/heapd.proto",
                  "/usr/share/man/man8/heapd.8.gz", "/usr/share/man/man1/heapctl.1.gz",
                  "/usr/share/man/man5/heapd.yaml.5.gz",
                  "/usr/share/man/man7/heapd-protocol.7.gz",
                  "/usr/share/doc/heapd/copyright", "/usr/share/doc/heapd/changelog.gz",
                  "/usr/share/doc/heapd/DEPLOYMENT.md.gz"]:
            self.assertIn(f, heapd)
        so = os.environ.get("HEAPD_CLIENT_SOVERSION", "0")
        lib = files("libheapdclient1")
        self.assertIn("/usr/lib/%s/libheapdclient.so.%s" % (self.multiarch(), so), lib)
        dev = files("libheapdclient-dev")
        self.assertIn("/usr/include/heapd/client.h", dev)
        self.assertIn("/usr/lib/%s/pkgconfig/heapdclient.pc" % self.multiarch(), dev)
        py = files("python3-heapd")
        self.assertIn("/usr/lib/python3/dist-packages/heapd/_version.py", py)
        self.assertIn("/usr/lib/python3/dist-packages/heapd/_proto/heapd_pb2.py", py)
        self.assertTrue([f for f in py if re.match(r"/usr/lib/python3/dist-packages/heapd/"
                                                   r"_speedups\.cpython-\d+.*\.so$", f)],
                        "python3-heapd has no C codec")
        ctl = tempfile.mkdtemp(dir=b.tmp)
        run(["dpkg-deb", "--control", b.debs["heapd"], ctl + "/heapd"])
        with open(ctl + "/heapd/conffiles") as f:
            self.assertEqual(f.read().split(), ["/etc/heapd/heapd.yaml"])
        run(["dpkg-deb", "--control", b.debs["libheapdclient1"], ctl + "/lib"])
        with open(ctl + "/lib/symbols") as f:
            self.assertIn("hdc_connect@Base", f.read())

    def multiarch(self):
        return run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"]).stdout.strip()

    def test_3_deployment_guide(self):
        missing = have("systemd-nspawn", "nsenter")
        if missing:
            self.skipTest("not installed: %s (apt-get install systemd-container)"
                          % ", ".join(missing))
        if os.geteuid() != 0:
            self.skipTest("the guide is walked in a container, which needs root")
        blocks = guide_blocks()
        steps = [s for s, _, _ in blocks if s]
        self.assertEqual(len(steps), len(set(steps)), "step names repeat in DEPLOYMENT.md")
        self.assertEqual([s for s in HOOKS if s not in steps], [],
                         "steps the test checks that DEPLOYMENT.md no longer has")
        b = Build.get()
        text = walk_script(blocks)
        container = Container(b.tmp)
        try:
            container.start()
            debs = container.path("/root/debs")
            os.makedirs(debs)
            for deb in b.debs.values():
                shutil.copy(deb, debs)
            with open(container.path("/root/walk.sh"), "w") as f:
                f.write(text)
            if os.environ.get("HEAPD_BUILD_DIR"):  # to read, or run by hand, after a failure
                with open(os.path.join(os.environ["HEAPD_BUILD_DIR"], "deployment-walk.sh"),
                          "w") as f:
                    f.write(text)
            # Images for containers often forbid starting services on install (policy-rc.d
            # exits 101); a real machine does not, and the guide relies on it.
            container.sh("rm -f /usr/sbin/policy-rc.d")
            r = container.sh("bash /root/walk.sh", timeout=600)
            out = r.stdout + r.stderr
            if r.returncode != 0 or "::: walked" not in out:
                journal = container.sh("journalctl -b --no-pager -o short-monotonic | tail -40")
                self.fail("walking docs/DEPLOYMENT.md failed:\n%s\n--- journal:\n%s"
                          % (out[-8000:], journal.stdout))
        finally:
            container.stop()

    def test_4_lintian(self):
        b = Build.get()
        stdout, stderr = b.lintian.communicate(timeout=600)
        tags = [l for l in stdout.splitlines() if re.match(r"^[EWIPXO]: ", l)]
        errors = [t for t in tags if t.startswith("E: ")]
        warnings = [t for t in tags if t.startswith("W: ") and t.split()[2] not in LINTIAN_ACCEPTED]
        self.assertEqual(errors, [], stdout)
        self.assertEqual(warnings, [], "new lintian warnings: fix them, or list them in "
                                       "LINTIAN_ACCEPTED with the reason")
        self.assertNotIn("E:", stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
