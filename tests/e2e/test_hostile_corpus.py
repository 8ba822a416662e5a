r"""The hostile corpus (tests/data/hostile/*.txt) on both engines, through an upstream that
captures every byte it receives.

Each file is one raw request: `#` lines at the top say what it is and what must happen
(`# expect: 400 request_invalid <error.message>`, or `# expect: 200` for a request that must
be forwarded; `# path:` the record's url.path when it is not the request line's, `*` for
any; `# known: <engines> (why)` an open defect on those engines, which the test requires
to still fail there, so the mark goes when the defect is fixed). The rest is the request
with its line breaks dropped and the escapes `\r`, `\n`, `\0`, `\xHH` and `\\`
decoded, so every byte is visible and no editor or checkout can change it.

For each case the test checks what the client got, the record's error, and the upstream's
side: zero bytes of a refused request, and for an accepted one its request line, its
end-to-end header lines verbatim and its body bytes exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fast import _upstreams as scripted

pytestmark = pytest.mark.e2e

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hostile"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
# Not forwarded as the client sent them (RFC 9110 §7.6.1), or rewritten by the proxy.
_NOT_VERBATIM = (b"connection", b"keep-alive", b"te", b"trailer", b"upgrade", b"host", b"transfer-encoding")
_ESCAPES = {b"r": b"\r", b"n": b"\n", b"0": b"\0", b"\\": b"\\"}


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    status: int
    error_type: str | None
    message: str | None  # None: not pinned (the wording is checked by the unit tests)
    path: str | None  # None: any
    known: frozenset[str]  # engines on which the case is an open defect


def _decode(text: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i : i + 1] != b"\\":
            out += text[i : i + 1]
            i += 1
        elif text[i + 1 : i + 2] == b"x":
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            out += _ESCAPES[text[i + 1 : i + 2]]
            i += 2
    return bytes(out)


def load(path: Path) -> Case:
    meta: dict[str, str] = {}
    lines = path.read_bytes().split(b"\n")
    while lines and lines[0].startswith(b"#"):
        key, colon, value = lines.pop(0)[1:].decode().partition(":")
        if colon:
            meta[key.strip()] = value.strip()
    expect = meta["expect"].split(" ", 2)
    raw = _decode(b"".join(lines))
    path_meta = meta.get("path", f"/h/{path.stem}")
    return Case(
        path.stem,
        raw,
        int(expect[0]),
        expect[1] if len(expect) > 1 else None,
        expect[2] if len(expect) > 2 else None,
        None if path_meta == "*" else path_meta,
        frozenset(meta.get("known", "").partition("(")[0].split()),
    )


CASES = [load(path) for path in sorted(CORPUS.glob("*.txt"))]


class Capture:
    """What the upstream received: each request it parsed (head, raw body bytes) and any
    bytes that were not part of a whole request."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bytes]] = []
        self.stray: list[bytes] = []
        self.lock = threading.Lock()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    self._stray(e.partial)
                return
            try:
                body = await self._body(reader, head)
            except (ValueError, asyncio.IncompleteReadError):  # framing it cannot read: keep it all
                self._stray(head + await reader.read())
                return
            with self.lock:
                self.requests.append((head, body))
            writer.write(OK)
            await writer.drain()

    async def _body(self, reader: asyncio.StreamReader, head: bytes) -> bytes:
        length = scripted.header(head, b"content-length")
        if length is not None:
            return await reader.readexactly(int(length))
        if (scripted.header(head, b"transfer-encoding") or b"").lower() != b"chunked":
            return b""
        raw = b""
        while True:
            line = await reader.readuntil(b"\r\n")
            raw += line
            size = int(line.split(b";")[0], 16)
            if size == 0:
                break
            raw += await reader.readexactly(size + 2)
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":  # trailer fields
            raw += line
        return raw + line

    def _stray(self, data: bytes) -> None:
        with self.lock:
            self.stray.append(data)

    def taken(self) -> tuple[int, int]:
        with self.lock:
            return len(self.requests), len(self.stray)


@pytest.fixture
def capture() -> Iterator[tuple[Capture, scripted.Upstream]]:
    got = Capture()
    upstream = scripted.Upstream(got.serve)
    yield got, upstream
    upstream.close()


def _exchange(port: int, data: bytes) -> tuple[bytes, int]:
    """Send `data` and read until the proxy closes, or until one whole response with a
    Content-Length arrived (an accepted request keeps its connection). The reply, and the
    client's port (the record's source.port)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        client_port = sock.getsockname()[1]
        with contextlib.suppress(OSError):
            sock.sendall(data)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
                head, sep, body = received.partition(b"\r\n\r\n")
                length = scripted.header(head, b"content-length") if sep else None
                if length is not None and len(body) >= int(length):
                    break
    return received, client_port


def _record(proxy: Any, client_port: int) -> dict[str, Any]:
    """The one record of the request sent from `client_port`."""
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in proxy.access() if r["source"]["port"] == client_port]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{len(found)} records"
            return found[0]
        time.sleep(0.02)


def _request_parts(raw: bytes) -> tuple[bytes, list[bytes], bytes]:
    """Request line, header lines and body bytes of an accepted corpus request."""
    head, _, body = raw.lstrip(b"\r\n").partition(b"\r\n\r\n")
    line, *fields = head.split(b"\r\n")
    return line, fields, body


def _check_forwarded(case: Case, head: bytes, body: bytes) -> None:
    line, fields, sent_body = _request_parts(case.raw)
    got_line, *got_fields = head[:-4].split(b"\r\n")
    # the proxy speaks its own version upstream (RFC 9110 §2.5)
    assert got_line.rsplit(b" ", 1)[0] == line.rsplit(b" ", 1)[0], f"request line {got_line!r}"
    for field in fields:
        if field.partition(b":")[0].lower() not in _NOT_VERBATIM:
            assert field in got_fields, f"{field!r} not forwarded verbatim"
    if b"\r\ntransfer-encoding: chunked" in case.raw.lower():  # the proxy may re-frame it
        body, sent_body = _payload(body), _payload(sent_body)
    assert body == sent_body, f"body {body!r}"


def _payload(framed: bytes) -> bytes:
    """The data of a well-formed chunked body."""
    parts = []
    while (size := int(framed[: framed.index(b"\r\n")].partition(b";")[0], 16)) > 0:
        start = framed.index(b"\r\n") + 2
        parts.append(framed[start : start + size])
        framed = framed[start + size + 2 :]
    return b"".join(parts)


def test_the_hostile_corpus_is_refused_at_the_proxy_or_forwarded_exactly(
    start_proxylog, capture: tuple[Capture, scripted.Upstream], engine: str
) -> None:
    got, upstream = capture
    proxy = start_proxylog({"upstream": f"http://127.0.0.1:{upstream.port}", "timeouts": {"header": "2s"}})
    failures: list[str] = []
    fixed: list[str] = []
    for case in CASES:
        before = got.taken()
        try:
            reply, client_port = _exchange(proxy.port, case.raw)
            record = _record(proxy, client_port)
            assert reply.startswith(b"HTTP/1.1 %d " % case.status), f"reply {reply[:60]!r}"
            assert reply.count(b"HTTP/1.1 ") == 1, "more than one response"
            assert record["http"]["response"]["status_code"] == case.status
            assert record.get("error", {}).get("type") == case.error_type, f"error {record.get('error')}"
            if case.message is not None:
                assert record["error"]["message"] == case.message
            if case.path is not None:
                assert record["url"]["path"] == case.path, f"path {record['url']['path']!r}"
            if case.error_type is None:
                assert got.taken() == (before[0] + 1, before[1]), "not one whole request upstream"
                _check_forwarded(case, *got.requests[-1])
            else:
                assert b"connection: close" in reply.lower()
                assert got.taken() == before, "the upstream received bytes of a refused request"
        except (AssertionError, OSError, KeyError) as e:
            if engine not in case.known:
                failures.append(f"{case.name}: {str(e).splitlines()[0][:200]}")
        else:
            if engine in case.known:
                fixed.append(case.name)
    assert not failures, "\n".join(failures)
    assert not fixed, f"fixed on {engine}: remove their `known:` mark: {fixed}"
    assert not got.stray
    refused = [f"/h/{c.name}".encode() for c in CASES if c.error_type and engine not in c.known]
    assert not [
        head
        for head, _ in got.requests
        if any(path + b" " in head or path + b"?" in head for path in refused)
    ]
