"""Raw-socket HTTP/1.1 helpers for the fast plane's tests: reading responses one by one off a
connection (so pipelined answers can be checked in order) with their exact bytes."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import BinaryIO

TIMEOUT = 10.0


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw_head: bytes
    chunked: bool = False

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return b", ".join(values) if values else None

    def names(self) -> list[bytes]:
        return [n.lower() for n, _ in self.headers]


def connect(port: int, timeout: float = TIMEOUT) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(reader: BinaryIO, head_only: bool = False) -> Response:
    """One response from `reader` (a socket's makefile("rb")): head, then a body framed by
    Content-Length, chunked coding or the connection's close. Raises EOFError on a closed
    connection before a status line."""
    while True:
        line = reader.readline()
        if not line:
            raise EOFError("connection closed before a response")
        raw = [line]
        while (field := reader.readline()) not in (b"\r\n", b""):
            raw.append(field)
        raw.append(field)
        _version, status, reason = line.rstrip(b"\r\n").split(b" ", 2)
        if not 100 <= int(status) < 200 or int(status) == 101:
            break
    headers = []
    for field in raw[1:-1]:
        name, _, value = field.rstrip(b"\r\n").partition(b":")
        headers.append((name, value.strip()))
    response = Response(int(status), reason, headers, b"", b"".join(raw))
    if head_only or response.status in (101, 204, 304):
        return response
    length = response.header(b"content-length")
    if response.header(b"transfer-encoding") == b"chunked":
        response.chunked = True
        parts = []
        while size := int(reader.readline().split(b";")[0], 16):
            parts.append(reader.read(size))
            reader.readline()
        reader.readline()
        response.body = b"".join(parts)
    elif length is not None:
        response.body = reader.read(int(length))
    else:
        response.body = reader.read()
    return response


def exchange(port: int, request: bytes, count: int = 1, head_only: bool = False) -> list[Response]:
    """Send raw `request` bytes on a fresh connection and read `count` responses."""
    with connect(port) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        return [read_response(reader, head_only) for _ in range(count)]


def read_all(sock: socket.socket) -> bytes:
    """Everything until the peer closes (a reset counts as a close)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the peer has closed: EOF or reset, after any bytes still unread."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def get(path: str, host: bytes = b"app", extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path.encode(), host, extra)
