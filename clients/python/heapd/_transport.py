# SPDX-License-Identifier: MIT
"""Addresses and sockets: where a session connects, and the stream socket under it.

Frames (the length prefix and what is inside) are the codec's business (``_codec.py``);
matching responses to requests is the session's.  This module parses heapd URLs, in the
same forms as ``heapctl --connect`` and the C client, makes the TLS context of a
``tls://`` URL (the stdlib :mod:`ssl`), and opens blocking sockets for
:class:`heapd.Session` (``heapd.asyncio`` opens its own with the event loop, with the same
context).
"""

import os
import socket
import ssl

from .errors import ConnectionClosed

__all__ = ["DEFAULT_URL", "ENV_URL", "ENV_CACERT", "ENV_CERT", "ENV_KEY", "parse_url",
           "is_tls_url", "resolve_url", "tls_context", "open_socket"]

#: Where ``heapd`` listens by default (``config/heapd.yaml``).
DEFAULT_URL = "tcp://127.0.0.1:7420"

#: The environment variable naming the default URL (as for heapctl).
ENV_URL = "HEAPD_URL"

#: The environment variables heapctl reads for ``--cacert``, ``--cert`` and ``--key``; the
#: Python client reads them too, for a ``tls://`` URL given no TLS arguments.
ENV_CACERT = "HEAPD_CACERT"
ENV_CERT = "HEAPD_CERT"
ENV_KEY = "HEAPD_KEY"


def resolve_url(url=None):
    """``url``, else ``$HEAPD_URL`` (when set and not empty), else :data:`DEFAULT_URL`."""
    return url or os.environ.get(ENV_URL) or DEFAULT_URL


def parse_url(url):
    """Splits a heapd URL into ``(family, address)`` for :func:`socket.socket`.

    The forms heapctl accepts: ``tcp://host:port`` and ``host:port`` (IPv6 addresses in
    brackets: ``[::1]:7420``), ``tls://host:port`` (the same address, with TLS: see
    :func:`is_tls_url`), ``unix:/path`` (also ``unix:///path`` and the relative
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
    if url.startswith(("tcp://", "tls://")):
        hostport = url[len("tcp://"):]
    elif "://" in url:
        raise ValueError(f"unsupported URL {url!r}: expected tcp://host:port, "
                         f"tls://host:port, host:port, unix:/path or /path")
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


def is_tls_url(url):
    """True for a ``tls://host:port`` URL: the connection speaks TLS (tls.listen)."""
    return isinstance(url, str) and url.startswith("tls://")


def tls_context(url, ssl_context=None, ssl_ca_certs=None, ssl_certfile=None,
                ssl_keyfile=None):
    """The :class:`ssl.SSLContext` a session to ``url`` uses, or None for a URL that is not
    ``tls://``.

    ``ssl_context`` is used as it is.  Otherwise one is made as
    :func:`ssl.create_default_context` makes it (the server's certificate verified, its
    name or IP address checked against the URL's host, TLS 1.2 at least), trusting
    ``ssl_ca_certs`` (a PEM file; default ``$HEAPD_CACERT``, else the system's CAs), and
    presenting ``ssl_certfile`` with ``ssl_keyfile`` (default ``$HEAPD_CERT`` and
    ``$HEAPD_KEY``) to a server that asks for a client certificate (mutual TLS).  These are
    redis-py's argument names.  Raises :class:`ValueError` when TLS arguments come with a
    URL that is not ``tls://``, :class:`OSError`/:class:`ssl.SSLError` for files that do not
    load.
    """
    given = any(v is not None for v in (ssl_context, ssl_ca_certs, ssl_certfile, ssl_keyfile))
    if not is_tls_url(url):
        if given:
            raise ValueError(f"TLS arguments given for {url!r}: TLS needs a tls://host:port "
                             f"URL")
        return None
    if ssl_context is not None:
        if not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, not "
                            f"{type(ssl_context).__name__}")
        return ssl_context
    if not given:
        ssl_ca_certs = os.environ.get(ENV_CACERT) or None
        ssl_certfile = os.environ.get(ENV_CERT) or None
        ssl_keyfile = os.environ.get(ENV_KEY) or None
    ctx = ssl.create_default_context(cafile=ssl_ca_certs)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ssl_certfile:
        ctx.load_cert_chain(ssl_certfile, ssl_keyfile)
    elif ssl_keyfile:
        raise ValueError("ssl_keyfile given without ssl_certfile")
    return ctx


def open_socket(url, connect_timeout=10.0, ssl_context=None):
    """A connected blocking stream socket to ``url``, with TCP_NODELAY for TCP; with
    ``ssl_context`` (for a ``tls://`` URL, from :func:`tls_context`), an
    :class:`ssl.SSLSocket` whose handshake is done, the server's certificate checked
    against the URL's host.

    Raises :class:`heapd.ConnectionClosed` (a :class:`ConnectionError`) when it cannot
    connect or the handshake fails (its cause is the :class:`ssl.SSLError`, such as
    :class:`ssl.SSLCertVerificationError`), :class:`ValueError` for a bad URL.
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
            if ssl_context is not None:
                try:
                    sock = ssl_context.wrap_socket(sock, server_hostname=address[0])
                except BaseException:
                    sock.close()
                    raise
    except ssl.SSLError as exc:
        raise ConnectionClosed(f"TLS handshake with {url} failed: {exc}") from exc
    except OSError as exc:
        raise ConnectionClosed(f"cannot connect to {url}: {exc}") from exc
    return sock
