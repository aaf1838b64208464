# SPDX-License-Identifier: MIT
"""The Python package's build backend (PEP 517), with nothing to download.

``pyproject.toml`` names this module as its backend and requires nothing, so that
``pip install clients/python`` and ``python3 -m build clients/python`` work on a machine
with no index to reach: pip's isolated build environment has nothing to install, and this
file needs only the standard library.  It builds what the CMake build does
(clients/python/CMakeLists.txt), from the same sources:

* the package's own modules, ``heapd/*.py``;
* ``heapd/_proto/heapd_pb2.py``, generated with ``protoc --python_out`` from the repository's
  ``proto/heapd.proto`` (an sdist carries it already generated, and so needs no protoc);
* ``heapd/_version.py``, the version written once in the top ``CMakeLists.txt``'s
  ``project(heapd VERSION ...)`` (an sdist carries that too);
* the C codec ``heapd/_speedups``, compiled with the compiler and flags the running Python was
  built with (``sysconfig``), as distutils did.  When it cannot be built (no compiler, no
  ``python3-dev``), or when asked not to (``--config-settings speedups=no``, or
  ``HEAPD_PYTHON_SPEEDUPS=0``), the wheel is the pure-Python one and says so.

The wheel's metadata come from ``pyproject.toml``'s ``[project]`` table.  Nothing is written
into the source tree.
"""

import base64
import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile

try:
    import tomllib
except ImportError:  # Python before 3.11: the one thing read from the file is simple
    tomllib = None

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # clients/python
REPO = os.path.dirname(os.path.dirname(HERE))
# Building from the repository (its proto/ and CMakeLists.txt), or from an sdist (which
# carries the generated files instead).
IN_REPO = os.path.exists(os.path.join(REPO, "proto", "heapd.proto")) and \
    os.path.exists(os.path.join(REPO, "clients", "python", "backend"))
PACKAGE = "heapd"


# ---------------------------------------------------------------------------------------
# What goes in.
# ---------------------------------------------------------------------------------------


def _project():
    with open(os.path.join(HERE, "pyproject.toml"), "rb") as f:
        data = f.read()
    if tomllib is not None:
        return tomllib.loads(data.decode("utf-8"))["project"]
    raise RuntimeError("heapd's build backend needs Python 3.11 (tomllib)")


def _version():
    """project(heapd VERSION x.y.z) of the repository, or the sdist's _version.py."""
    if IN_REPO:
        with open(os.path.join(REPO, "CMakeLists.txt"), encoding="utf-8") as f:
            m = re.search(r"project\(\s*heapd\s+VERSION\s+([0-9][0-9.]*)", f.read())
        if not m:
            raise RuntimeError("no project(heapd VERSION ...) in the top CMakeLists.txt")
        return m.group(1)
    with open(os.path.join(HERE, PACKAGE, "_version.py"), encoding="utf-8") as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def _version_py(version):
    return ('"""The package\'s version, generated from project(VERSION); do not edit."""\n'
            f'__version__ = "{version}"\n')


def _pb2():
    """The source of heapd/_proto/heapd_pb2.py: the sdist's, or protoc's from the repository."""
    shipped = os.path.join(HERE, PACKAGE, "_proto", "heapd_pb2.py")
    if not IN_REPO and os.path.exists(shipped):
        with open(shipped, encoding="utf-8") as f:
            return f.read()
    proto_dir = os.path.join(REPO, "proto")
    protoc = shutil.which("protoc")
    if protoc is None:
        raise RuntimeError("protoc not found: apt-get install protobuf-compiler "
                           "(needed to build heapd from the repository; an sdist has it built)")
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([protoc, f"-I{proto_dir}", f"--python_out={out}",
                        os.path.join(proto_dir, "heapd.proto")], check=True)
        with open(os.path.join(out, "heapd_pb2.py"), encoding="utf-8") as f:
            text = f.read()
    # Imports of the repository's other protos become package-relative (as
    # clients/python/cmake/fix_imports.cmake does); google.protobuf's stay.
    return re.sub(r"(^|\n)import ([A-Za-z0-9_]+_pb2)( as |\n)", r"\1from . import \2\3", text)


PROTO_INIT = '"""Protobuf modules generated from proto/*.proto at build time."""\n'


def _sources():
    """(path in the package, bytes) of every file of the package, generated ones included."""
    files = []
    pkg = os.path.join(HERE, PACKAGE)
    for name in sorted(os.listdir(pkg)):
        if name.endswith(".py") and name != "_version.py":
            with open(os.path.join(pkg, name), "rb") as f:
                files.append((f"{PACKAGE}/{name}", f.read()))
    version = _version()
    files.append((f"{PACKAGE}/_version.py", _version_py(version).encode()))
    files.append((f"{PACKAGE}/_proto/__init__.py", PROTO_INIT.encode()))
    files.append((f"{PACKAGE}/_proto/heapd_pb2.py", _pb2().encode()))
    return version, files


# ---------------------------------------------------------------------------------------
# The C codec.
# ---------------------------------------------------------------------------------------


def _want_speedups(config_settings):
    setting = (config_settings or {}).get("speedups")
    if setting is None:
        setting = os.environ.get("HEAPD_PYTHON_SPEEDUPS", "auto")
    return str(setting).lower() not in ("0", "no", "false", "off")


def _build_speedups(tmp):
    """Compiles heapd/_speedups.c for this Python; returns (name in the package, bytes), or
    None with a message on stderr when it cannot."""
    source = os.path.join(HERE, PACKAGE, "_speedups.c")
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    cflags = shlex.split((sysconfig.get_config_var("CFLAGS") or "") + " " +
                         (sysconfig.get_config_var("CCSHARED") or "-fPIC"))
    ldshared = shlex.split(sysconfig.get_config_var("LDSHARED") or "cc -shared")
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    include = sysconfig.get_paths()["include"]
    obj = os.path.join(tmp, "_speedups.o")
    out = os.path.join(tmp, "_speedups" + suffix)
    if not os.path.exists(os.path.join(include, "Python.h")):
        print(f"heapd: no {include}/Python.h (apt-get install python3-dev): building the "
              f"pure-Python package", file=sys.stderr)
        return None
    try:
        subprocess.run(cc + cflags + ["-std=c11", "-fvisibility=hidden", f"-I{include}",
                                      "-c", source, "-o", obj], check=True)
        subprocess.run(ldshared + [obj, "-o", out], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"heapd: cannot build the C codec ({exc}): building the pure-Python package",
              file=sys.stderr)
        return None
    with open(out, "rb") as f:
        return f"{PACKAGE}/_speedups{suffix}", f.read()


def _tag(compiled):
    if not compiled:
        return "py3-none-any"
    impl = sys.implementation.cache_tag.replace("-", "")  # "cpython311"
    impl = "cp" + impl[len("cpython"):] if impl.startswith("cpython") else impl
    plat = re.sub(r"[^A-Za-z0-9]+", "_", sysconfig.get_platform())
    return f"{impl}-{impl}-{plat}"


# ---------------------------------------------------------------------------------------
# Metadata and archives.
# ---------------------------------------------------------------------------------------


def _metadata(version):
    p = _project()
    lines = ["Metadata-Version: 2.1", f"Name: {p['name']}", f"Version: {version}",
             f"Summary: {p['description']}"]
    for url_name, url in p.get("urls", {}).items():
        lines.append(f"Project-URL: {url_name}, {url}")
    lic = p.get("license", {})
    if "text" in lic:
        lines.append(f"License: {lic['text']}")
    if "requires-python" in p:
        lines.append(f"Requires-Python: {p['requires-python']}")
    for dep in p.get("dependencies", []):
        lines.append(f"Requires-Dist: {dep}")
    for c in p.get("classifiers", []):
        lines.append(f"Classifier: {c}")
    readme = p.get("readme")
    body = ""
    if readme:
        with open(os.path.join(HERE, readme), encoding="utf-8") as f:
            body = f.read()
        lines.append("Description-Content-Type: text/markdown")
    return "\n".join(lines) + "\n\n" + body


def _dist_info(version):
    return f"{PACKAGE}-{version}.dist-info"


def _record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def _zip_write(z, path, data):
    info = zipfile.ZipInfo(path, date_time=time.gmtime(_epoch())[:6])
    info.external_attr = (0o755 if path.endswith(".so") else 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    z.writestr(info, data)


def _epoch():
    """SOURCE_DATE_EPOCH when set (reproducible builds), else 1980-01-01."""
    return int(os.environ.get("SOURCE_DATE_EPOCH", "315532800"))


# ---------------------------------------------------------------------------------------
# PEP 517 hooks.
# ---------------------------------------------------------------------------------------


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    version = _version()
    info = os.path.join(metadata_directory, _dist_info(version))
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w", encoding="utf-8") as f:
        f.write(_metadata(version))
    return _dist_info(version)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    version, files = _sources()
    with tempfile.TemporaryDirectory() as tmp:
        ext = _build_speedups(tmp) if _want_speedups(config_settings) else None
    if ext is not None:
        files.append(ext)
    tag = _tag(ext is not None)
    info = _dist_info(version)
    files.append((f"{info}/METADATA", _metadata(version).encode()))
    files.append((f"{info}/WHEEL", (
        "Wheel-Version: 1.0\nGenerator: heapd_build_backend\n"
        f"Root-Is-Purelib: {'false' if ext else 'true'}\nTag: {tag}\n").encode()))
    record = [_record_line(path, data) for path, data in files] + [f"{info}/RECORD,,"]
    files.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    name = f"{PACKAGE}-{version}-{tag}.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for path, data in files:
            _zip_write(z, path, data)
    return name


def build_sdist(sdist_directory, config_settings=None):
    """The source tree of the package with its generated files, as a tar.gz."""
    version, files = _sources()
    root = f"{PACKAGE}-{version}"
    members = [(f"{root}/{path}", data) for path, data in files]
    for rel in ("pyproject.toml", "README.md", "backend/heapd_build_backend.py",
                f"{PACKAGE}/_speedups.c"):
        with open(os.path.join(HERE, rel), "rb") as f:
            members.append((f"{root}/{rel}", f.read()))
    members.append((f"{root}/PKG-INFO", _metadata(version).encode()))
    name = f"{root}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz", format=tarfile.PAX_FORMAT) as t:
        for path, data in sorted(members):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = _epoch()
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    return name
