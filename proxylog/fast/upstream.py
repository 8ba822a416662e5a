"""Connections to Puma: reading its responses with httptools (llhttp) and forwarding them to
the client connection that owns the exchange, with back-pressure both ways."""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol, cast

import httptools

MAX_RESPONSE_HEAD = 256 * 1024
_BODYLESS = frozenset({204, 304})

# How a response body is delimited.
R_NONE, R_LENGTH, R_CHUNKED, R_CLOSE, R_TUNNEL = range(5)
_HEAD, _BODY = 0, 1


class Downstream(Protocol):
    """What an upstream connection tells the client connection it serves."""

    head_only: bool  # the request was HEAD: no response body whatever the headers say
    upgrade: bool  # the request asked for a protocol upgrade

    def response_began(self) -> None: ...
    def response_interim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None: ...
    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framing: int
    ) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_end(self, up: UpstreamConn, reusable: bool) -> None: ...
    def upstream_failed(self, up: UpstreamConn, kind: str, message: str, retryable: bool) -> None: ...
    def tunnel_closed(self) -> None: ...
    def flush(self) -> None: ...
    def pause_client(self) -> None: ...
    def resume_client(self) -> None: ...


class Discards(Protocol):
    """The pool an upstream connection leaves when it closes or misbehaves while idle."""

    def discard(self, up: UpstreamConn) -> None: ...


class _Response:
    """httptools callbacks for one response (kept apart from the connection so the parser,
    which holds these bound methods, makes no reference cycle with it)."""

    __slots__ = ("complete", "extra", "headers", "parts", "reason")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.parts: list[bytes] = []
        self.complete = self.extra = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value.rstrip(b" \t")))  # llhttp keeps trailing OWS

    def on_body(self, data: bytes) -> None:
        self.parts.append(data)

    def on_message_begin(self) -> None:
        self.extra = self.complete  # Puma sent something after the response: not reusable

    def on_message_complete(self) -> None:
        self.complete = True


class UpstreamConn(asyncio.Protocol):
    """One keep-alive connection to Puma, serving one exchange at a time (`bind`)."""

    __slots__ = (
        "_buf",
        "_parser",
        "_remaining",
        "_response",
        "_state",
        "framing",
        "got_bytes",
        "keep",
        "lost",
        "owner",
        "pool",
        "reused",
        "transport",
    )

    def __init__(self, pool: Discards) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.owner: Downstream | None = None
        self.reused = False  # served an exchange before this one
        self.got_bytes = False
        self.lost = False
        self.keep = True
        self.framing = R_NONE
        self._state = _HEAD
        self._buf = b""
        self._remaining = 0
        self._parser: httptools.HttpResponseParser | None = None
        self._response: _Response | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # a stream connection (uvloop: not a subclass)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def bind(self, owner: Downstream) -> None:
        """Start serving `owner`'s exchange; the caller then writes its request."""
        self.owner = owner
        self._state = _HEAD
        self._buf = b""
        self.got_bytes = False

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def close(self) -> None:
        """Close at once (a connection with an unfinished exchange is never reused)."""
        self.owner = None
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:  # an idle pooled connection is not expected to speak
            self.pool.discard(self)
            self.close()
            return
        try:
            if self._state == _HEAD:
                self._head(owner, data)
            else:
                self._body(owner, data)
        finally:
            owner.flush()

    def _head(self, owner: Downstream, data: bytes) -> None:
        if not self.got_bytes:
            self.got_bytes = True
            owner.response_began()
        while True:
            if self._buf:
                data, self._buf = self._buf + data, b""
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_RESPONSE_HEAD:
                    self._fail(owner, "upstream_invalid", f"response head over {MAX_RESPONSE_HEAD} bytes")
                else:
                    self._buf = data
                return
            response = _Response()
            parser = httptools.HttpResponseParser(response)
            try:
                parser.feed_data(data[: end + 4])
            except httptools.HttpParserUpgrade:
                pass  # a 101: llhttp stops at the head, which is all that is fed here
            except httptools.HttpParserError as e:
                self._fail(owner, "upstream_invalid", f"invalid response head: {e}")
                return
            status = parser.get_status_code()
            data = data[end + 4 :]
            if 100 <= status < 200 and status != 101:
                owner.response_interim(status, response.reason, response.headers)
                continue
            framing = self._framing(owner, status, response.headers)
            if framing < 0:
                self._fail(owner, "upstream_invalid", "101 Switching Protocols without an upgrade request")
                return
            self.keep = parser.should_keep_alive() and framing in (R_NONE, R_LENGTH, R_CHUNKED)
            self.framing = framing
            self._state = _BODY
            if framing == R_CHUNKED:
                self._parser, self._response = parser, response
            owner.response_head(status, response.reason, response.headers, framing)
            if self.owner is not owner:  # the client went away meanwhile
                return
            if framing == R_NONE or (framing == R_LENGTH and not self._remaining):
                self._complete(owner, self.keep and not data)
            elif data:
                self._body(owner, data)
            return

    def _framing(self, owner: Downstream, status: int, headers: list[tuple[bytes, bytes]]) -> int:
        if status == 101:
            return R_TUNNEL if owner.upgrade else -1
        if owner.head_only or status in _BODYLESS:
            return R_NONE
        length = None
        chunked = False
        for name, value in headers:
            low = name.lower()
            if low == b"content-length":
                length = int(value)  # llhttp accepted it: digits, one value
            elif low == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
        if chunked:
            return R_CHUNKED
        if length is not None:
            self._remaining = length
            return R_LENGTH
        return R_CLOSE

    def _body(self, owner: Downstream, data: bytes) -> None:
        framing = self.framing
        if framing == R_LENGTH:
            remaining = self._remaining
            if len(data) < remaining:
                self._remaining = remaining - len(data)
                owner.response_body(data)
                return
            self._remaining = 0
            owner.response_body(data if len(data) == remaining else data[:remaining])
            self._complete(owner, self.keep and len(data) == remaining)
        elif framing == R_CHUNKED:
            self._chunked(owner, data)
        elif framing in (R_CLOSE, R_TUNNEL):
            owner.response_body(data)
        # R_NONE: bytes after a bodyless response; _complete already marked it not reusable

    def _chunked(self, owner: Downstream, data: bytes) -> None:
        parser, response = self._parser, self._response
        assert parser is not None and response is not None  # set with R_CHUNKED framing
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as e:
            if not response.complete:
                for part in response.parts:
                    owner.response_body(part)
                self._fail(owner, "upstream_invalid", f"invalid chunked response body: {e}")
                return
            response.extra = True  # bytes after a Connection: close response
        for part in response.parts:
            owner.response_body(part)
        response.parts.clear()
        if response.complete:
            self._complete(owner, self.keep and not response.extra)

    def _complete(self, owner: Downstream, reusable: bool) -> None:
        self.owner = None
        self._parser = self._response = None
        self.reused = True
        owner.response_end(self, reusable)

    def _fail(self, owner: Downstream, kind: str, message: str) -> None:
        retryable = self.reused and not self.got_bytes
        self.close()
        owner.upstream_failed(self, kind, message, retryable)

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        owner = self.owner
        if owner is None:
            self.pool.discard(self)
            return
        self.owner = None
        if self._state == _BODY and self.framing == R_CLOSE:
            owner.response_end(self, False)
        elif self._state == _BODY and self.framing == R_TUNNEL:
            owner.tunnel_closed()
        else:
            where = "before the response head" if self._state == _HEAD else "mid-response"
            why = f": {exc}" if exc is not None else ""
            retryable = self.reused and not self.got_bytes
            owner.upstream_failed(
                self, "upstream_reset", f"Puma closed the connection {where}{why}", retryable
            )
        owner.flush()

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.pause_client()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.resume_client()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()
