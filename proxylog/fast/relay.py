"""One exchange on the fast plane: the request body to Puma, Puma's response to the client,
or a 101 tunnel, with back-pressure both ways and exactly one `Handler.finish`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from proxylog.fast.chunked import ChunkedReader, ChunkError, dechunk
from proxylog.fast.contract import ErrorType, Exchange, RequestHead
from proxylog.fast.heads import CHUNKED, LENGTH, NO_BODY, Framing, upstream_head
from proxylog.fast.upstream import R_CHUNKED, R_CLOSE, R_NONE, R_TUNNEL, UpstreamConn

if TYPE_CHECKING:
    from proxylog.fast.client import ClientConn

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
REPLAY_MAX = 64 * 1024  # a request is kept for a retry while what was sent stays under this
# Response fields the plane handles itself: framing (it re-frames a chunked or close-delimited
# body) and the connection's own; the names Puma's Connection header lists go too.
_RESPONSE_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
_TUNNEL_KEEP = frozenset({b"connection", b"upgrade"})

# Relay states; the client connection routes its bytes by them.
BODY, WAIT, TUNNEL, DONE = range(4)
# Why the client's reading is paused (a bit each, on the client connection).
P_UPSTREAM, P_CONNECTING = 1, 2


class Relay:
    """The exchange for one request head, from `start` until `Handler.finish`."""

    __slots__ = (
        "ahead",
        "body_done",
        "buffer",
        "cap",
        "chunks",
        "close_after",
        "conn",
        "ex",
        "facts",
        "finished",
        "head",
        "head_only",
        "out",
        "outbox",
        "remaining",
        "response_sent",
        "retried",
        "sent",
        "sent_size",
        "state",
        "tail",
        "to_client",
        "up",
        "upgrade",
        "window_bytes",
    )

    def __init__(self, conn: ClientConn, ex: Exchange, head: RequestHead, facts: Framing) -> None:
        self.conn = conn
        self.ex = ex
        self.head = head
        self.facts = facts
        self.head_only = head.method == b"HEAD"
        self.upgrade = facts.upgrade
        self.state = WAIT
        self.remaining = facts.length
        self.chunks = ChunkedReader() if facts.body == CHUNKED else None
        self.tail = b""
        self.buffer: bytearray | None = None
        self.cap = 0
        self.outbox: list[bytes] | None = None  # what waits for a connection to Puma
        self.sent: list[bytes] | None = None  # what Puma was sent, for a retry
        self.sent_size = 0
        self.up: UpstreamConn | None = None
        self.ahead: bytearray | None = None
        self.out: list[bytes] = []  # client bytes gathered during one upstream read
        self.to_client = R_NONE
        self.body_done = facts.body == NO_BODY or (facts.body == LENGTH and not facts.length)
        self.response_sent = False
        self.close_after = facts.close
        self.retried = False
        self.finished = False
        self.window_bytes = 0

    # -- the request ------------------------------------------------------------------

    def start(self, rest: bytes) -> None:
        """Decide the exchange's course now that its head is complete; `rest` is what the
        client sent after the head."""
        server = self.conn.server
        handler, options, ex, facts = server.handler, server.options, self.ex, self.facts
        if server.draining:
            self.reply(503, "shutdown", "proxylog is shutting down")
            return
        blocked = handler.check(ex)
        if blocked is not None:  # its body is never read: it counts 0 bytes, as on every plane
            self._close_with(blocked, unread=not self.body_done or bool(rest))
            return
        limit = options.body_size
        if facts.body == LENGTH and limit is not None and facts.length > limit:
            self.reply(
                413, "body_too_large", f"declared body of {facts.length} bytes over the {limit}-byte limit"
            )
            return
        if not self.body_done:
            wants = handler.wants_body(ex)
            self.cap = min(wants, options.stream_threshold)
            if wants > 0 and (facts.body == CHUNKED or facts.length <= self.cap):
                self.buffer = bytearray()
        if self.buffer is None:
            self._prepare()
        elif facts.expect_continue and not rest and not facts.http10:
            self.conn.write(CONTINUE)
        if self.body_done:
            self._connect()
            self._request_complete(rest)
            return
        self.state = BODY
        server.body_due.arm(self)
        if rest:  # checked into the outbox first: invalid framing never reaches Puma
            self._body_data(rest)
        if self.outbox is not None and self.up is None and not self.finished:
            self._connect()

    def _open(self, body: bytes = b"") -> None:
        """Write the request head (and `body`) to a pooled connection, or connect one."""
        self._prepare(body)
        self._connect()

    def _prepare(self, body: bytes = b"") -> None:
        ex = self.ex
        head = upstream_head(
            self.head.method,
            ex.path,
            ex.upstream_headers,
            self.facts,
            self.conn.server.options.protected_headers,
        )
        self.outbox = [head, body] if body else [head]

    def _connect(self) -> None:
        pool = self.conn.server.pool
        up = pool.acquire()
        if up is not None:
            self._attach(up, reused=True)
        else:
            self.conn.pause(P_CONNECTING)
            pool.connect(self)

    def upstream_ready(self, up: UpstreamConn) -> bool:
        """A fresh connection to Puma is open (pool callback)."""
        if self.finished or self.outbox is None:
            return False
        self.conn.resume(P_CONNECTING)
        self._attach(up, reused=False)
        return True

    def upstream_unavailable(self, message: str) -> None:
        if not self.finished:
            self.reply(502, "upstream_connect", message)

    def _attach(self, up: UpstreamConn, reused: bool) -> None:
        assert self.outbox is not None  # set by _open or a retry
        self.up = up
        up.reused = reused
        up.bind(self)
        if self.conn.write_paused:
            up.pause_reading()
        data = b"".join(self.outbox)
        self.outbox = None
        self.sent = [data] if len(data) <= REPLAY_MAX else None
        self.sent_size = len(data)
        up.write(data)
        facts = self.facts
        if (
            facts.expect_continue
            and not facts.http10
            and not self.body_done
            and not self.ex.request_body_bytes
        ):
            self.conn.write(CONTINUE)
        if self.body_done and self.state != TUNNEL:
            self._sent_all()

    def _send(self, data: bytes) -> None:
        up = self.up
        if up is None:
            if self.outbox is not None:
                self.outbox.append(data)
            return
        up.write(data)
        if self.sent is not None:
            self.sent_size += len(data)
            if self.sent_size > REPLAY_MAX:
                self.sent = None
            else:
                self.sent.append(data)

    def client_data(self, data: bytes) -> None:
        """Bytes from the client while this exchange runs."""
        state = self.state
        if state == BODY:
            self._body_data(data)
        elif state == WAIT:
            self._ahead(data)
        elif state == TUNNEL and self.up is not None:
            self.ex.request_body_bytes += len(data)
            self.up.write(data)

    def _body_data(self, data: bytes) -> None:
        self.window_bytes += len(data)
        ex = self.ex
        if self.chunks is None:  # Content-Length
            remaining = self.remaining
            rest = b""
            if len(data) > remaining:
                data, rest = data[:remaining], data[remaining:]
            self.remaining = remaining - len(data)
            ex.request_body_bytes += len(data)
            self._body_piece(data, len(data))
            if not self.remaining:
                self._request_complete(rest)
            return
        if self.tail:
            data, self.tail = self.tail + data, b""
        before = self.chunks.payload
        try:
            pos = self.chunks.feed(data)
        except ChunkError as e:
            self._cut("request_invalid", 400, str(e))
            return
        ex.request_body_bytes = payload = self.chunks.payload
        limit = self.conn.server.options.body_size
        if limit is not None and payload > limit:
            self._cut("body_too_large", 413, f"chunked body over the {limit}-byte limit")
            return
        self._body_piece(data if pos == len(data) else data[:pos], payload - before)
        if self.chunks.done:
            self._request_complete(data[pos:])
        else:
            self.tail = data[pos:]

    def _body_piece(self, piece: bytes, payload: int) -> None:
        buffer = self.buffer
        if buffer is None:
            if piece:
                self._send(piece)
            return
        buffer += piece
        if self.ex.request_body_bytes > self.cap:  # a chunked body larger than the handler wanted
            self.buffer = None
            self._open(bytes(buffer))

    def _request_complete(self, rest: bytes) -> None:
        self.body_done = True
        server = self.conn.server
        server.body_due.disarm(self)
        self.state = WAIT
        if self.buffer is not None:
            body = bytes(self.buffer)
            self.buffer = None
            blocked = server.handler.check_body(self.ex, dechunk(body) if self.chunks is not None else body)
            if blocked is not None:
                self._close_with(blocked, unread=bool(rest))
                return
            self._open(body)
        elif self.up is not None and self.ex.request_ended is None:
            self._sent_all()
        if rest:
            self._ahead(rest)

    def _sent_all(self) -> None:
        self.ex.request_ended = time.time()
        self.conn.server.upstream_due.arm(self)

    def _ahead(self, data: bytes) -> None:
        if self.ahead is None:
            self.ahead = bytearray(data)
        else:
            self.ahead += data
        limit = self.conn.server.options.header_bytes
        if len(self.ahead) > limit:
            self._cut("request_invalid", 400, f"the client sent over {limit} bytes ahead of its answer")

    # -- the response (UpstreamConn callbacks) -----------------------------------------

    def response_began(self) -> None:
        self.ex.response_started = time.time()

    def response_interim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        if self.facts.http10:  # RFC 9110 §15.2: never a 1xx to an HTTP/1.0 client
            return
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for name, value in _response_fields(headers, tunnel=False):
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        self.ex.response_head_bytes += len(head)
        self.out.append(head)

    def response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framing: int
    ) -> None:
        conn = self.conn
        server = conn.server
        server.upstream_due.disarm(self)
        ex, facts = self.ex, self.facts
        fields = server.handler.response_head(ex, status, _response_fields(headers, framing == R_TUNNEL))
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        to_client = framing
        if framing in (R_CHUNKED, R_CLOSE):
            if facts.http10:  # no chunked coding for HTTP/1.0: the body runs to the close
                to_client = R_CLOSE
                self.close_after = True
            else:  # chunked for HTTP/1.1 clients, so their connection stays open
                to_client = R_CHUNKED
                parts.append(b"Transfer-Encoding: chunked\r\n")
        drop_length = to_client in (R_CHUNKED, R_CLOSE)
        for name, value in fields:
            if drop_length and name.lower() == b"content-length":
                continue
            parts += (name, b": ", value, b"\r\n")
        if framing == R_TUNNEL:
            ex.upgraded = True
            self.state = TUNNEL
            server.body_due.disarm(self)
        elif self.close_after or server.draining or not self.body_done:
            self.close_after = True
            parts.append(b"Connection: close\r\n")
        elif facts.http10:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        ex.status = status
        ex.response_head_bytes += len(head)
        self.response_sent = True
        self.to_client = to_client
        self.out.append(head)
        if framing == R_TUNNEL and self.ahead and self.up is not None:
            early, self.ahead = bytes(self.ahead), None
            ex.request_body_bytes += len(early)
            self.up.write(early)

    def response_body(self, data: bytes) -> None:
        self.ex.response_body_bytes += len(data)
        if self.to_client == R_CHUNKED:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)

    def response_end(self, up: UpstreamConn, reusable: bool) -> None:
        if self.to_client == R_CHUNKED:
            self.out.append(b"0\r\n\r\n")
        self.flush()
        self.up = None
        if self.finished:
            up.close()
            return
        if reusable and self.body_done:
            self.conn.server.pool.release(up)
        else:
            up.close()
        self.close_after = self.close_after or not self.body_done
        self._finish()
        ahead = bytes(self.ahead) if self.ahead else b""
        self.conn.exchange_done(keep=not self.close_after, leftover=ahead)

    def upstream_failed(self, up: UpstreamConn, kind: str, message: str, retryable: bool) -> None:
        self.up = None
        if self.finished:
            return
        if retryable and not self.retried and self.sent is not None and self.head.method in IDEMPOTENT:
            # a reused connection Puma had already closed: once more, on a fresh one
            self.retried = True
            self.conn.server.upstream_due.disarm(self)
            self.outbox, self.sent = self.sent, None
            self.conn.pause(P_CONNECTING)
            self.conn.server.pool.connect(self)
            return
        error: ErrorType = "upstream_invalid" if kind == "upstream_invalid" else "upstream_reset"
        if self.response_sent:  # the client has the head: a truncated response is all it can see
            self._abort(error, message)
        else:
            self.reply(502, error, message)

    def tunnel_closed(self) -> None:
        """Puma closed the tunnel: the client's side closes once what it was sent is out."""
        self.flush()
        self.up = None
        self._finish()
        self.conn.close()

    def flush(self) -> None:
        """Write what one upstream read produced for the client, in one call."""
        out = self.out
        if out:
            self.conn.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def pause_client(self) -> None:
        self.conn.pause(P_UPSTREAM)

    def resume_client(self) -> None:
        self.conn.resume(P_UPSTREAM)

    # -- endings -----------------------------------------------------------------------

    def reply(self, status: int, error: ErrorType | None, message: str) -> None:
        """Answer with proxylog's own reply (the handler builds it and sets the status)."""
        self._close_with(self.conn.server.handler.reply(self.ex, status, error, message))

    def _close_with(self, data: bytes, unread: bool | None = None) -> None:
        """Send a complete reply in place of Puma's response, close, finish."""
        if self.up is not None:
            self.up.close()
            self.up = None
        self.outbox = None
        head, sep, body = data.partition(b"\r\n\r\n")  # counted apart, as the handler did
        self.ex.response_head_bytes, self.ex.response_body_bytes = len(head) + len(sep), len(body)
        if unread is None:
            unread = not self.body_done or bool(self.ahead)
        self.state = DONE
        self.conn.send_and_close(data, linger=unread)
        self._finish()

    def _cut(self, error: ErrorType, status: int, message: str) -> None:
        """End an exchange the client broke: a reply if no response head went out yet."""
        if self.response_sent:
            self._abort(error, message)
        else:
            self.reply(status, error, message)

    def _abort(self, error: ErrorType, message: str) -> None:
        """Drop both connections (the client sees a truncated response, or none)."""
        self.flush()
        if self.ex.error_type is None:
            self.ex.error_type, self.ex.error_message = error, message
        if self.up is not None:
            self.up.close()
            self.up = None
        self.state = DONE
        self._finish()
        self.conn.abort()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.state = DONE
        self.conn.server.exchange_finished(self)

    def client_lost(self, eof: bool) -> bool:
        """The client closed (eof) or its connection is gone; True to keep writing to it."""
        if self.finished:
            return False
        if eof and self.state == WAIT:
            self.close_after = True  # a half-close: it can still read its response
            return True
        where = {BODY: " during the request body", TUNNEL: " (tunnel)"}.get(self.state, "")
        if self.state == TUNNEL:
            self.flush()
        elif self.ex.error_type is None:
            self.ex.error_type = "client_disconnect"
            self.ex.error_message = f"the client closed the connection{where}"
        if self.up is not None:
            self.up.close()
            self.up = None
        self._finish()
        return False

    def client_paused(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def client_resumed(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    def upstream_expired(self) -> None:
        """No response head within the upstream timeout."""
        if not self.finished and not self.response_sent:
            timeout = self.conn.server.options.upstream_timeout
            self.reply(504, "upstream_timeout", f"no response head from Puma within {timeout:g} s")

    def body_expired(self) -> None:
        """A body window ended: cut the client if it sent below the minimum rate."""
        if self.state != BODY or self.finished:
            return
        options = self.conn.server.options
        waiting = self.conn.paused & (P_UPSTREAM | P_CONNECTING)
        if not waiting and self.window_bytes < options.body_rate * options.body_window:
            self._cut("client_timeout", 408, f"request body slower than {options.body_rate} bytes/s")
            return
        self.window_bytes = 0
        self.conn.server.body_due.arm(self)

    def write_expired(self, held: bool = False) -> None:
        """The client left its response unread for the write timeout (`held`: the earlier
        responses this request was held behind)."""
        timeout = self.conn.server.options.write_timeout
        what = "its earlier responses" if held else "its response"
        self._abort("client_timeout", f"the client did not read {what} for {timeout:g} s")

    def abandon(self) -> None:
        """Shutdown: end the exchange now, recorded as such."""
        self._abort("shutdown", "proxylog stopped before the exchange ended")


def _response_fields(headers: list[tuple[bytes, bytes]], tunnel: bool) -> list[tuple[bytes, bytes]]:
    """Puma's fields without hop-by-hop ones (Connection and Upgrade kept for a 101)."""
    named: set[bytes] = set()
    fields = []
    for name, value in headers:
        low = name.lower()
        if low in _RESPONSE_HOP:
            if low == b"connection":
                named.update(t.strip(b" \t").lower() for t in value.split(b","))
            if not (tunnel and low in _TUNNEL_KEEP):
                continue
        fields.append((name, value))
    named -= {b"content-length", b"close", b"keep-alive", b"upgrade"}
    if named:
        fields = [(n, v) for n, v in fields if n.lower() not in named]
    return fields
