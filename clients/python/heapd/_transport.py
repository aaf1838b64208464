"""The byte stream under a session: addresses, sockets and length-prefixed frames.

A frame is a 4-byte big-endian length followed by that many bytes of one protobuf
message.  This module knows nothing about the messages inside; ``session.py`` does.
It owns the socket and the read buffer, and nothing else.
"""

import socket
import struct
import urllib.parse

from .errors import ConnectionClosed, Error

__all__ = ["DEFAULT_URL", "parse_url", "Transport"]

#: Where ``heapd`` listens by default (``config/heapd.yaml``).
DEFAULT_URL = "tcp://127.0.0.1:7420"

#: The largest frame the client accepts from the server (the daemon's own limit is
#: smaller by default; this only stops a corrupt length from allocating gigabytes).
MAX_FRAME = 256 << 20

_LEN = struct.Struct(">I")


def parse_url(url):
    """Splits a heapd URL into ``(family, address)`` for :func:`socket.socket`.

    Accepted forms: ``tcp://host:port`` (IPv6 hosts in brackets), ``unix:/path``,
    ``unix:///path`` and ``unix://relative/path``.  Raises :class:`ValueError`
    for anything else.
    """
    if url.startswith("unix:"):
        path = url[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError(f"no socket path in {url!r}")
        return socket.AF_UNIX, path
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise ValueError(f"bad heapd URL {url!r}: expected tcp://host:port or unix:/path")
    return socket.AF_UNSPEC, (parts.hostname, parts.port)


class Transport:
    """One connected stream socket that sends and receives whole frames."""

    def __init__(self, url, timeout=None, connect_timeout=10.0):
        self.url = url
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
        sock.settimeout(timeout)
        self._sock = sock
        self._timeout = timeout
        self._buf = bytearray()

    @property
    def closed(self):
        return self._sock is None

    def send(self, payloads):
        """Sends each payload (bytes) as one frame, all in a single write."""
        if self._sock is None:
            raise ConnectionClosed("connection is closed")
        out = bytearray()
        for p in payloads:
            out += _LEN.pack(len(p))
            out += p
        try:
            self._sock.sendall(out)
        except OSError as exc:
            # The socket stays open: what the server sent before it closed (its reason,
            # say) can still be read.
            raise ConnectionClosed(f"send failed: {exc}") from exc

    def recv(self, timeout=None, block=True):
        """Returns the payload of the next frame.

        With ``block=False`` returns ``None`` at once when no whole frame can be
        read within ``timeout`` seconds (0 = only what has already arrived).
        """
        while True:
            frame = self._take_frame()
            if frame is not None:
                return frame
            if self._sock is None:
                raise ConnectionClosed("connection is closed")
            if not block:
                self._sock.settimeout(timeout)
            try:
                chunk = self._sock.recv(1 << 16)
            except (BlockingIOError, socket.timeout):
                if not block:
                    return None
                # A reply may still come later and would then answer the wrong
                # request: the stream can no longer be trusted.
                self.close()
                raise ConnectionClosed("timed out waiting for the server") from None
            except OSError as exc:
                self.close()
                raise ConnectionClosed(f"receive failed: {exc}") from exc
            finally:
                if not block and self._sock is not None:
                    self._sock.settimeout(self._timeout)
            if not chunk:
                self.close()
                raise ConnectionClosed("server closed the connection")
            self._buf += chunk

    def _take_frame(self):
        if len(self._buf) < 4:
            return None
        (n,) = _LEN.unpack_from(self._buf)
        if n > MAX_FRAME:
            self.close()
            raise Error(f"server sent a frame of {n} bytes (limit {MAX_FRAME})")
        if len(self._buf) < 4 + n:
            return None
        frame = bytes(self._buf[4:4 + n])
        del self._buf[:4 + n]
        return frame

    def close(self):
        """Closes the socket; safe to call more than once."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
