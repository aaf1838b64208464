# SPDX-License-Identifier: MIT
"""Addresses and sockets: where a session connects, and the stream socket under it.

Frames (the length prefix and what is inside) are the codec's business (``_codec.py``);
matching responses to requests is the session's.  This module parses heapd URLs, in the
same forms as ``heapctl --connect`` and the C client, and opens blocking sockets for
:class:`heapd.Session` (``heapd.asyncio`` opens its own with the event loop).
"""

import os
import socket

from .errors import ConnectionClosed

__all__ = ["DEFAULT_URL", "ENV_URL", "parse_url", "resolve_url", "open_socket"]

#: Where ``heapd`` listens by default (``config/heapd.yaml``).
DEFAULT_URL = "tcp://127.0.0.1:7420"

#: The environment variable naming the default URL (as for heapctl).
ENV_URL = "HEAPD_URL"


def resolve_url(url=None):
    """``url``, else ``$HEAPD_URL`` (when set and not empty), else :data:`DEFAULT_URL`."""
    return url or os.environ.get(ENV_URL) or DEFAULT_URL


def parse_url(url):
    """Splits a heapd URL into ``(family, address)`` for :func:`socket.socket`.

    The forms heapctl accepts: ``tcp://host:port`` and ``host:port`` (IPv6 addresses in
    brackets: ``[::1]:7420``), ``unix:/path`` (also ``unix:///path`` and the relative
    ``unix:rel.sock``) and a bare absolute path ``/path``.  Raises :class:`ValueError` for
    anything else.
    """
    if not isinstance(url, str):
        raise TypeError(f"URL must be a str, not {type(url).__name__}")
    if url.startswith("unix:"):
        path = url[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError(f"no socket path in {url!r}")
        return socket.AF_UNIX, path
    if url.startswith("/"):
        return socket.AF_UNIX, url
    hostport = url
    if url.startswith("tcp://"):
        hostport = url[len("tcp://"):]
    elif "://" in url:
        raise ValueError(f"unsupported URL {url!r}: expected tcp://host:port, host:port, "
                         f"unix:/path or /path")
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or hostport[end + 1:end + 2] != ":":
            raise ValueError(f"bad address {url!r}: want [v6addr]:port")
        host, port = hostport[1:end], hostport[end + 2:]
    else:
        host, sep, port = hostport.rpartition(":")
        if not sep:
            raise ValueError(f"bad address {url!r}: want host:port")
    if not host or "/" in host or "[" in host or "]" in host:
        raise ValueError(f"bad address {url!r}: want host:port")
    if not port.isdigit() or not port.isascii() or int(port) > 65535:
        raise ValueError(f"bad port in {url!r}")
    return socket.AF_UNSPEC, (host, int(port))


def open_socket(url, connect_timeout=10.0):
    """A connected blocking stream socket to ``url``, with TCP_NODELAY for TCP.

    Raises :class:`heapd.ConnectionClosed` (a :class:`ConnectionError`) when it cannot
    connect, :class:`ValueError` for a bad URL.
    """
    family, address = parse_url(url)
    try:
        if family == socket.AF_UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(connect_timeout)
            try:
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(address, timeout=connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        raise ConnectionClosed(f"cannot connect to {url}: {exc}") from exc
    return sock
