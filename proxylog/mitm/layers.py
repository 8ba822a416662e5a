"""Layers proxylog substitutes for mitmproxy's: TLS refusal on a plain-HTTP listener, and an
HTTP/1 server layer that bounds, checks and frames requests as the fast plane does (the
shared rules in proxylog/http1.py), with proxylog's own error replies."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from h11._readers import ChunkedReader
from h11._receivebuffer import ReceiveBuffer
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers.http import HttpLayer
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    RequestData,
    RequestHeaders,
    RequestProtocolError,
    ResponseProtocolError,
)
from mitmproxy.proxy.layers.http._http1 import Http1Server, make_body_reader
from mitmproxy.proxy.mode_specs import ReverseMode

from proxylog.http1 import MAX_CHUNK_LINE, ChunkError, check_head, chunk_size, empty_lines_at, find_head_end
from proxylog.mitm.connections import client_transport
from proxylog.mitm.flows import BODY_ARRIVED, HEAD_SIZES
from proxylog.mitm.reads import Reads, set_reads
from proxylog.mitm.replies import REFUSED, TIMED_OUT, error_reply
from proxylog.mitm.slow import HELD, BodyPace
from proxylog.net import UNREAD_LIMIT, peer_failed, reset_on_close, unread_bytes
from proxylog.record import ErrorType

logger = logging.getLogger("proxylog")

# TLS record: alert, TLS 1.0 framing, length 2, fatal (2), handshake_failure (40).
HANDSHAKE_FAILURE_ALERT = b"\x15\x03\x01\x00\x02\x02\x28"

# (client, the refused head's raw bytes, status, message, error type) -> the reply to send
# (status 0: record the head, send nothing).
RefuseHead = Callable[[Any, bytes, int, str, ErrorType], bytes]

# How long a refused client has to read its reply before the connection is closed under it
# (as on the fast plane); nothing more is read from it meanwhile.
LINGER = 2.0
# How often a held request head looks again at what its client left unread, as on the fast
# plane: from the first value, doubling up to the second.
HOLD_POLL = (0.005, 0.2)


class RefuseTLS(layer.Layer):
    """Sends a fatal handshake_failure alert and closes the client connection."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start | events.DataReceived):
            yield commands.SendData(self.context.client, HANDSHAKE_FAILURE_ALERT)
            yield commands.CloseConnection(self.context.client)


def refuse_tls_on_plain_listener(nextlayer: layer.NextLayer) -> bool:
    """In a plain-HTTP reverse listener, replace the TLS layer mitmproxy picked for a
    ClientHello with RefuseTLS. Returns True when it did."""
    mode = nextlayer.context.client.proxy_mode
    if not isinstance(mode, ReverseMode) or mode.scheme != "http":
        return False
    if nextlayer.context.client.tls_established or not starts_like_tls_record(nextlayer.data_client()):
        return False
    nextlayer.layer = RefuseTLS(nextlayer.context)
    return True


class GuardedHttp1Server(Http1Server):
    """mitmproxy's HTTP/1 server layer, reading requests as the fast plane does.

    A request head, counting any empty lines before it, must end within `max_head` bytes.
    The check runs on every read and scans only the bytes that arrived since the last one,
    and no more than `max_head` + 1 bytes of a head are ever buffered (what follows a head
    that ended is kept for its body): a head past the bound is refused at once. While a
    head is read the socket is read in small pieces (`bound_reads`, reads.py), so a
    connection holds at most its head and two such reads (mitmproxy's own buffer would take
    every read whole). While a request is being answered, a client that sends more than
    `max_head` ahead of its answer is cut off. A complete head goes through the shared `check_head` on its raw
    bytes; one that is too large or refused never becomes a flow: `refuse` records it and
    returns the reply, sent before the connection is half-closed; then nothing more is read
    and the connection is closed after `LINGER` seconds. Chunked bodies are read by
    StrictChunkedReader; bad framing fails the flow after proxylog's 400.

    mitmproxy's error pages (HTML naming mitmproxy, echoing the client's input) are replaced
    by proxylog's short replies carrying the request's X-Request-Id.

    A request body must arrive at `body_rate` bytes/s or more, averaged over each
    `body_window` (0: no bound), as on the fast plane: a window is a mitmproxy wakeup, and a
    body below the rate is cut with proxylog's 408, recorded `client_timeout`.

    A request head that arrives while the client has more than UNREAD_LIMIT of its earlier
    responses unread is held, unparsed and unread by Puma, until it reads them (`_hold`),
    as on the fast plane; held `write_timeout` seconds, it is recorded client_timeout and
    the connection reset.
    """

    body_rate = 0
    body_window = 0.0
    write_timeout = 0.0
    pace: BodyPace | None = None

    def __init__(self, context: Any, max_head: int, refuse: RefuseHead) -> None:
        super().__init__(context)
        self.max_head = max_head
        self.refuse = refuse
        self.refused = False
        # Bytes of empty lines read before the current head (RFC 9112 §2.2 lets a server
        # ignore them; mitmproxy drops one per read, which let them dodge the limit).
        self.skipped = 0
        self.scanned = 0  # how far the buffer was searched for the head's end
        self.rest = b""  # what came after the first max_head + 1 bytes of a head in a read
        self.lingering: commands.RequestWakeup | None = None
        self.reads: Reads | None = None  # how the client's socket is read now (None: not set here yet)
        self.held: commands.RequestWakeup | None = None  # the next look while a head is held
        self.held_since = 0.0
        self.held_end = 0  # the held head's length in the buffer

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Wakeup):
            if event.command is self.lingering:
                yield commands.CloseConnection(self.conn)
            elif event.command is self.held:
                yield from self._hold_check()
                self.bound_reads()
            else:
                yield from self.body_window_ended(event)
            return
        if self.held is not None and isinstance(event, events.DataReceived):
            # Still read while held, so that a close is noticed: kept for after the hold,
            # bounded as what a client sends ahead of its answer is.
            self.buf += event.data
            if len(self.buf) - self.held_end > self.max_head:
                raw = self._end_held()
                yield from self._refuse(
                    raw, 400, f"the client sent over {self.max_head} bytes ahead of its answer"
                )
            return
        if self.held is not None and isinstance(event, events.ConnectionClosed):
            yield from self._held_client_gone()
            return
        if self.refused and isinstance(event, events.ConnectionEvent):
            # After a refusal, bytes the client sent before reading stopped are discarded,
            # never buffered, until the linger ends or the client closes.
            if isinstance(event, events.ConnectionClosed):
                yield commands.CloseConnection(self.conn)
            return
        if isinstance(event, events.DataReceived) and self.state == self.read_headers:
            # mitmproxy would buffer the whole read: only what the bound needs is kept here,
            # the rest waits in `rest` until the head is known to have ended within it.
            room = max(0, self.max_head + 1 - self.skipped - len(self.buf))
            self.buf += event.data[:room]
            self.rest = event.data[room:]
            yield from self.read_headers(event)
            self.rest = b""
            self.bound_reads()
            return
        if (
            isinstance(event, events.DataReceived)
            and self.state == self.wait
            and len(self.buf) + len(event.data) > self.max_head
        ):
            # While a request is answered, mitmproxy buffers whatever the client sends next
            # (pipelining). More than a request head's worth is not pipelining: the request
            # fails (it is recorded as such), the rest is discarded and the connection closed.
            yield from self._cut(f"the client sent over {self.max_head} bytes ahead of its answer")
            return
        yield from super()._handle_event(event)
        self.bound_reads()

    def bound_reads(self) -> None:
        """Read the client's socket as a head is read (reads.py) while a head is read or the
        answer awaited, with asyncio's defaults otherwise (a body, a tunnel); after a
        refused head, not at all (a request cut by `_cut` is read and discarded until the
        client closes: nothing else would close it)."""
        if self.lingering is not None:
            reads = Reads.STOPPED
        else:
            reads = Reads.HEAD if self.state in (self.read_headers, self.wait) else Reads.BODY
        if reads is not self.reads and set_reads(self.conn, reads):
            self.reads = reads

    def read_headers(self, event: events.ConnectionEvent) -> layer.CommandGenerator[None]:
        """mitmproxy's Http1Server.read_headers with the head limit and proxylog's refusals: the
        head's end is found and the head checked exactly as on the fast plane (`check_head` on
        the raw bytes), and only a head it accepts is parsed by mitmproxy."""
        if isinstance(event, events.ConnectionClosed):
            if self.buf:
                logger.debug("client closed after %d bytes of an incomplete request head", len(self.buf))
            yield commands.CloseConnection(self.conn)
            return
        if not isinstance(event, events.DataReceived):
            raise AssertionError(f"Unexpected event: {event}")
        data = _buffered(self.buf)
        skip = empty_lines_at(data)
        if skip:
            self.buf.maybe_extract_at_most(skip)
            self.skipped += skip
        end = find_head_end(data, max(0, self.scanned - 3))
        if (end if end >= 0 else len(data)) + self.skipped > self.max_head:
            yield from self._refuse(self._take(len(data)), 431, f"request head over {self.max_head} bytes")
            return
        if end < 0:
            self.scanned = len(data)
            return
        if self.stream_id > 1 and self._behind():
            self.buf += self.rest
            self.rest = b""
            self.held_end, self.held_since = end, time.monotonic()
            yield from self._hold(HOLD_POLL[0])
            return
        raw = self._take(end)
        self.skipped = 0
        self.buf += self.rest  # the head ended within the bound: the rest is its body or more
        self.rest = b""
        reason = check_head(raw)
        if reason is not None:
            yield from self._refuse(raw, 400, reason)
            return
        try:
            self.request = request = http1.read_request_head(raw.split(b"\r\n")[:-2])
            expected_body_size = http1.expected_http_body_size(request)
        except ValueError as e:  # what check_head accepts but mitmproxy cannot represent
            yield from self._refuse(raw, 400, str(e)[:100])
            return
        HEAD_SIZES[request] = len(raw)
        yield ReceiveHttp(RequestHeaders(self.stream_id, request, expected_body_size == 0))
        chunked = expected_body_size is None
        self.body_reader = StrictChunkedReader() if chunked else make_body_reader(expected_body_size)
        self.state = self.read_body
        yield from self.state(event)

    def read_body(self, event: events.Event) -> layer.CommandGenerator[None]:
        """mitmproxy's read_body, with chunk framing errors answered 400 (mitmproxy closes
        the connection without a reply), and the body's pace kept."""
        pace = self.pace
        if pace is None or pace.request is not self.request:  # a new body: its first window
            pace = self.pace = BodyPace(self.request)
            if self.body_rate > 0 and self.body_window > 0:
                yield pace.next_window(self.body_window)
        before = len(self.buf)
        try:
            for command in super().read_body(event):
                if isinstance(command, ReceiveHttp) and isinstance(command.event, RequestData):
                    pace.payload += len(command.event.data)
                yield command
        except ChunkError as e:
            yield from self._cut(str(e))
        pace.window_bytes += max(0, before - len(self.buf))

    def body_window_ended(self, event: events.Wakeup) -> layer.CommandGenerator[None]:
        """A body window ended: cut the request if its body came slower than `body_rate`."""
        pace = self.pace
        if pace is None or event.command is not pace.wakeup or self.state != self.read_body or self.refused:
            return  # the body ended (or the request failed) within the window
        if pace.window_bytes < self.body_rate * self.body_window:
            if self.request is not None:
                BODY_ARRIVED[self.request] = pace.payload
            why = f"request body slower than {self.body_rate} bytes/s"
            yield from self._cut(why, 408, TIMED_OUT)
            return
        yield pace.next_window(self.body_window)

    def _cut(self, why: str, status: int = 400, prefix: str = REFUSED) -> layer.CommandGenerator[None]:
        """Fail the request being read or answered: proxylog's reply (400, or 408 for a body
        too slow), sent once, then a half-close; the rest of the client's bytes are discarded.
        The flow's error carries `why` after `prefix` (REFUSED: recorded as request_invalid;
        TIMED_OUT: client_timeout)."""
        self.refused = True
        self.buf.maybe_extract_at_most(len(self.buf))
        yield commands.SendData(self.conn, error_reply(self.request, status))
        yield commands.CloseTcpConnection(self.conn, half_close=True)
        yield ReceiveHttp(RequestProtocolError(self.stream_id, prefix + why, ErrorCode.GENERIC_CLIENT_ERROR))

    # -- a client behind on its responses (as the fast plane's ClientConn._hold) ---------------

    def _behind(self) -> bool:
        return unread_bytes(client_transport(self.conn)) > UNREAD_LIMIT

    def _hold(self, delay: float) -> layer.CommandGenerator[None]:
        """Hold the complete head at the buffer's start, to be looked at again after
        `delay`. Registered in HELD, so that a write timeout ending the connection first
        records it."""
        self.held = commands.RequestWakeup(delay)
        HELD[self.context.client] = self._record_held
        yield self.held

    def _hold_check(self) -> layer.CommandGenerator[None]:
        assert self.held is not None
        delay = self.held.delay
        if peer_failed(client_transport(self.conn)):  # reset, and not yet read as a close
            yield from self._held_client_gone()
            return
        if not self._behind():
            self.held = None
            HELD.pop(self.context.client, None)
            yield from self.read_headers(events.DataReceived(self.conn, b""))
            return
        if 0 < self.write_timeout <= time.monotonic() - self.held_since:
            self._record_held(f"the client did not read its earlier responses for {self.write_timeout:g} s")
            reset_on_close(client_transport(self.conn))
            yield commands.CloseConnection(self.conn)
            return
        yield from self._hold(min(delay * 2, HOLD_POLL[1]))

    def _record_held(self, why: str) -> None:
        """The held head's end by the write timeout: recorded client_timeout, no reply (its
        client is not reading)."""
        if self.held is not None:
            self.refuse(self.context.client, self._end_held(), 0, why, "client_timeout")

    def _held_client_gone(self) -> layer.CommandGenerator[None]:
        why = "the client closed the connection"
        self.refuse(self.context.client, self._end_held(), 0, why, "client_disconnect")
        yield commands.CloseConnection(self.conn)

    def _end_held(self) -> bytes:
        """Stop holding: the held head's raw bytes; the connection reads nothing more."""
        self.held = None
        HELD.pop(self.context.client, None)
        self.state = self.done
        self.refused = True  # what the client still sends is discarded until it closes
        return self._take(self.held_end)

    def _take(self, count: int) -> bytes:
        """The first `count` buffered bytes, removed from the buffer."""
        self.scanned = 0
        return bytes(self.buf.maybe_extract_at_most(count) or b"")

    def _refuse(self, raw: bytes, status: int, why: str) -> layer.CommandGenerator[None]:
        self.state = self.done
        self.refused = True
        answer = self.refuse(self.context.client, raw, status, why, "request_invalid")
        yield commands.SendData(self.conn, answer)
        yield from self._linger()

    def _linger(self) -> layer.CommandGenerator[None]:
        """End a connection after proxylog's final reply: half-close (closing outright while
        the client is still sending loses the reply to a reset, and mitmproxy can leave such
        a socket open when it closes mid-read), read nothing more (bound_reads), and close
        after the linger."""
        yield commands.CloseTcpConnection(self.conn, half_close=True)
        self.lingering = commands.RequestWakeup(LINGER)
        yield self.lingering

    def send(self, event: Any) -> layer.CommandGenerator[None]:
        if not isinstance(event, ResponseProtocolError):
            yield from super().send(event)
            return
        if not self.conn.state & ConnectionState.CAN_WRITE:
            return
        status = event.code.http_status_code()
        if not self.response and status is not None:
            yield commands.SendData(self.conn, error_reply(self.request, status))
        if self.state == self.read_body and not self.refused:
            # The request's body is still arriving (a block written before it was read, then
            # the flow killed): mitmproxy would go on reading it to its end after the close.
            self.refused = True
            self.state = self.done
            yield from self._linger()
            return
        yield commands.CloseConnection(self.conn)


class StrictChunkedReader(ChunkedReader):
    """h11's chunked-body reader, with every chunk-size line, chunk end and the end of the
    body first checked as the fast plane checks them (`chunk_size`); raises ChunkError.
    (h11 takes bare LFs, `0x` prefixes and sizes past 2**64 into a line or a size.)"""

    def __call__(self, buf: ReceiveBuffer) -> Any:
        data = _buffered(buf)
        if self._reading_trailer:  # after the last chunk: only the empty line, no trailer fields
            if data[:2] != b"\r\n"[: len(data)]:
                raise ChunkError("trailers are not supported")
        elif self._bytes_to_discard:
            end = self._bytes_to_discard
            if data[: len(end)] != end[: len(data)]:
                raise ChunkError("chunk data not followed by CRLF")
            if len(data) >= len(end):  # h11 would go on to the next size line unchecked
                buf.maybe_extract_at_most(len(end))
                self._bytes_to_discard = b""
                return self(buf)
        elif self._bytes_in_chunk == 0:
            lf = data.find(b"\n", 0, MAX_CHUNK_LINE)
            if lf < 0:
                if len(data) >= MAX_CHUNK_LINE:
                    raise ChunkError("chunk size line too long")
                if b"\r" in data[:-1]:
                    raise ChunkError("bare CR in chunk size line")
                return None
            chunk_size(data[:lf])
        return super().__call__(buf)


def _buffered(buf: ReceiveBuffer) -> bytearray:
    """The bytes h11's receive buffer holds, searched in place: copying them on every read
    would make a trickled head cost quadratic time."""
    return buf._data


def guard_http1(
    nextlayer: layer.NextLayer,
    max_head: int,
    refuse: RefuseHead,
    body_rate: tuple[int, float] = (0, 0.0),
    write_timeout: float = 0.0,
) -> bool:
    """When mitmproxy chose its HTTP layer for an HTTP/1 client, preset the client side to
    GuardedHttp1Server (HttpLayer keeps a preset one, as for client playback), with the
    request body's minimum pace `body_rate` (bytes/s, window in s) and how long a head may
    be held behind unread responses (`write_timeout`). True if it did."""
    http_layer = nextlayer.layer
    alpn = nextlayer.context.client.alpn
    if not isinstance(http_layer, HttpLayer) or (alpn is not None and not alpn.startswith(b"http/1")):
        return False
    client = http_layer.context.client
    server = GuardedHttp1Server(http_layer.context.fork(), max_head, refuse)
    server.body_rate, server.body_window = body_rate
    server.write_timeout = write_timeout
    http_layer.connections.setdefault(client, server)
    return True
