"""A client connection on the fast plane: reading request heads (bounded), refusing bad ones,
handing each valid one to a Relay, keep-alive, timeouts and the end of the connection."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING, cast

from proxylog.fast.contract import RequestHead
from proxylog.fast.heads import framing, split_head
from proxylog.fast.relay import P_CONNECTING, P_UPSTREAM, Relay
from proxylog.http1 import check_head, empty_lines_at, find_head_end, lenient_head
from proxylog.net import UNREAD_LIMIT, peer_failed, reset_on_close, unread_bytes

if TYPE_CHECKING:
    from proxylog.fast.server import FastServer

HEAD, EXCHANGE, CLOSED = range(3)
P_CLOSING = 4  # refused: reading stops for good (pause reasons share the Relay's bits)
# How often a held request looks again at what its client left unread: from the first
# value, doubling up to the second (a client reading at once is let through at once).
HOLD_POLL = (0.005, 0.2)
_TLS_HANDSHAKE = 0x16
# A fatal handshake_failure alert (RFC 8446 §6): a TLS client on the plain listener is told so
# at once, as the mitmproxy plane does, instead of waiting for a timeout.
_TLS_HANDSHAKE_FAILURE = b"\x15\x03\x01\x00\x02\x02\x28"


_EMPTY_LINE_START = (0x0D, 0x0A)


class ClientConn(asyncio.Protocol):
    """One client connection; at most one exchange runs at a time (a pipelined request
    waits, bounded, until the one before it is answered)."""

    __slots__ = (
        "armed",
        "held",
        "idle",
        "paused",
        "peer",
        "pending",
        "relay",
        "reported",
        "requests",
        "scanned",
        "server",
        "skipped",
        "started",
        "state",
        "transport",
        "unread",
        "write_paused",
    )

    def __init__(self, server: FastServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.state = HEAD
        self.pending = bytearray()  # an unfinished head
        self.skipped = 0  # empty lines before it
        self.scanned = 0  # how far `pending` was searched for the head's end
        self.started = 0.0
        self.requests = 0
        self.relay: Relay | None = None
        self.paused = 0  # P_* bits: why reading is paused
        self.write_paused = False
        self.armed = False  # the header deadline runs for the current head
        self.idle = False
        self.reported = False  # unreadable() or refuse() was called for the connection's end
        self.unread = 0  # at most this much of what was written is unread (last measured + since)
        self.held: tuple[bytes, asyncio.TimerHandle] | None = None  # see _hold

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # a stream server (uvloop: not a subclass)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        if not self.server.connection_opened(self):
            self.reported = True
            self.state = CLOSED
            self.server.handler.unreadable("over the per-client connection limit", False, True)
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.header_due.arm(self)
        self.armed = True

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == EXCHANGE:
            assert self.relay is not None  # EXCHANGE is the state with a relay
            self.relay.client_data(data)
        elif state == HEAD:
            self._head_data(data)
        # CLOSED: a refused client's last bytes, discarded

    def eof_received(self) -> bool:
        if self.state == EXCHANGE and self.relay is not None:
            return self.relay.client_lost(eof=True)
        if self.state == HEAD:
            self._ended_in_head(timed_out=False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        state, self.state = self.state, CLOSED
        self._release_hold()
        server = self.server
        for due in server.connection_deadlines:
            due.disarm(self)
        server.connection_closed(self)
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.client_lost(eof=False)
        elif state == HEAD:
            self._ended_in_head(timed_out=False)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.server.write_due.arm(self)
        if self.relay is not None:
            self.relay.client_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.held is None:  # a held request's write deadline runs until it goes on
            self.server.write_due.disarm(self)
        if self.relay is not None:
            self.relay.client_resumed()

    # -- request heads -------------------------------------------------------------------

    def _head_data(self, data: bytes) -> None:
        server = self.server
        limit = server.options.header_bytes
        pending = self.pending
        if not pending:  # the first bytes of a head
            if self.idle:
                self.idle = False
                server.idle_due.disarm(self)
            if not self.armed:
                self.armed = True
                server.header_due.arm(self)
            self.started = time.time()
            if data[0] == _TLS_HANDSHAKE and not self.requests:
                self._unreadable("TLS handshake on a plain-HTTP listener")
                self.send_and_close(_TLS_HANDSHAKE_FAILURE, linger=False)
                return
            if data[0] not in _EMPTY_LINE_START:  # no empty line to skip: the common case, no copy
                end = data.find(b"\r\n\r\n")
                if 0 <= end <= limit - 4:
                    end += 4
                    self._head(data if end == len(data) else data[:end], data[end:])
                    return
        pending += data
        skip = empty_lines_at(pending)
        if skip:
            del pending[:skip]
            self.skipped += skip
        end = find_head_end(pending, max(0, self.scanned - 3))
        if end < 0:
            self.scanned = len(pending)
            if len(pending) + self.skipped > limit:
                self._too_large()
            return
        if end + self.skipped > limit:
            self._too_large()
            return
        raw, rest = bytes(pending[:end]), bytes(pending[end:])
        pending.clear()
        self.skipped = self.scanned = 0
        self._head(raw, rest)

    def _head(self, raw: bytes, rest: bytes) -> None:
        server = self.server
        server.header_due.disarm(self)
        self.armed = False
        reason = check_head(raw)
        if reason is not None:
            self._refuse(raw, 400, reason)
            return
        method, target, version, headers = split_head(raw)
        head = RequestHead(method, target, version, headers, self.peer, False, self.started, len(raw))
        ex = server.handler.begin(head)
        self.requests += 1
        self.relay = relay = Relay(self, ex, head, framing(raw, version))
        self.state = EXCHANGE
        server.exchange_begun(relay)
        if self.requests > 1 and self._behind():
            self._hold(rest, HOLD_POLL[0])
            return
        relay.start(rest)

    # -- a client behind on its responses --------------------------------------------------

    def _behind(self) -> bool:
        """Whether the client has more than UNREAD_LIMIT of its responses unread. The
        socket is asked only when what was written since it last said "read" could exceed
        the limit, so a keep-alive client of small responses costs no system call."""
        if self.unread <= UNREAD_LIMIT:
            return False
        self.unread = unread_bytes(self.transport)
        return self.unread > UNREAD_LIMIT

    def _hold(self, rest: bytes, delay: float) -> None:
        """A client that sends its next request (pipelined, or without reading) while it
        has not read its earlier responses: the request waits, unforwarded and unread by
        Puma, until it does, so a client reading nothing can have one response in the
        kernel's buffers and no more requests at Puma. It waits under `timeouts.write`:
        left unread that long, the held request is recorded client_timeout (write_expired)
        and the connection reset. The connection is still read meanwhile, so a client that
        closes is noticed (and no longer counts against its address); what it sends is kept
        as pipelined bytes, bounded as they are (Relay._ahead)."""
        if self.held is None and self not in self.server.write_due:
            self.server.write_due.arm(self)
        timer = asyncio.get_running_loop().call_later(delay, self._hold_check, delay)
        self.held = (rest, timer)

    def _hold_check(self, delay: float) -> None:
        if self.held is None or self.relay is None or self.relay.finished:
            self.held = None  # the exchange ended while held (a cut, a close)
            return
        rest = self.held[0]
        if peer_failed(self.transport):
            # The client reset the connection (after a half-close, the transport is no
            # longer read, so only the socket knows): recorded client_disconnect.
            self.abort()
            return
        if self._behind():
            self._hold(rest, min(delay * 2, HOLD_POLL[1]))
            return
        self.held = None
        if not self.write_paused:
            self.server.write_due.disarm(self)
        relay = self.relay
        if relay.ahead:  # sent while the request was held: after its own rest
            rest, relay.ahead = rest + relay.ahead, None
        relay.start(rest)

    def _release_hold(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            held[1].cancel()

    def _too_large(self) -> None:
        raw = bytes(self.pending)
        self.pending.clear()
        self._refuse(raw, 431, f"request head over {self.server.options.header_bytes} bytes")

    def _refuse(self, raw: bytes, status: int, message: str) -> None:
        self.reported = True
        head = self._lenient(raw) or RequestHead(
            b"", b"", b"HTTP/1.1", [], self.peer, False, self.started, len(raw)
        )
        self.send_and_close(self.server.handler.refuse(head, status, message), linger=True)

    def _lenient(self, raw: bytes) -> RequestHead | None:
        parsed = lenient_head(raw) if b"\n" in raw else None
        if parsed is None:
            return None
        method, target, version, headers = parsed
        return RequestHead(method, target, version, headers, self.peer, False, self.started, len(raw))

    def _ended_in_head(self, timed_out: bool) -> None:
        """The connection ends between requests or inside a head (a close, the header
        timeout): counted, not recorded, as no request was made."""
        if self.reported:
            return
        partial = bool(self.pending)
        self.pending.clear()
        why = "header timeout" if timed_out else "closed"
        where = "in a request head" if partial else "before a request"
        self._unreadable(f"{why} {where}", timed_out)

    def _unreadable(self, reason: str, timed_out: bool = False) -> None:
        self.reported = True
        self.server.handler.unreadable(reason, timed_out, not self.requests)

    # -- between exchanges -----------------------------------------------------------------

    def exchange_done(self, keep: bool, leftover: bytes) -> None:
        """The relay finished with the client connection intact: next request, or close."""
        self.relay = None
        self.resume(P_UPSTREAM | P_CONNECTING)
        if not keep or self.server.draining or self.transport is None or self.transport.is_closing():
            self.close()
            return
        self.state = HEAD
        if leftover:
            self._head_data(leftover)
        else:
            self.idle = True
            self.server.idle_due.arm(self)

    def drain(self) -> None:
        """Shutdown began: idle connections close now, busy ones after their response."""
        if self.state == HEAD and not self.pending:
            if not self.requests and not self.reported:
                self._unreadable("closed by shutdown before a request")
            self.reported = True
            self.close()
        elif self.relay is not None:
            self.relay.close_after = True

    def end_soon(self) -> None:
        """Close between requests: now when idle, else after the response in progress (a
        request still arriving gets the answer it is due, a ban's 403 and close)."""
        if self.state == HEAD and not self.pending:
            self.reported = True
            self.close()
        elif self.relay is not None:
            self.relay.close_after = True

    # -- deadlines (the server's sweep) ------------------------------------------------------

    def header_expired(self) -> None:
        if self.state == HEAD:
            self._ended_in_head(timed_out=True)
            if self.state == HEAD:
                self.close()

    def idle_expired(self) -> None:
        if self.state == HEAD and not self.pending:
            self.reported = True
            self.close()

    def write_expired(self) -> None:
        reset_on_close(self.transport)
        if self.relay is not None:
            self.relay.write_expired(held=self.held is not None)
            self._release_hold()
        else:
            self.abort()

    def linger_expired(self) -> None:
        self.abort()

    # -- the transport -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.unread += len(data)
            transport.write(data)

    def pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reasons: int) -> None:
        was = self.paused
        self.paused &= ~reasons
        if was and not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def send_and_close(self, data: bytes, linger: bool) -> None:
        """Send a final reply and close. With `linger`, the client may still be sending (a
        body, more requests): stop reading, half-close, and give it `linger` seconds to read
        the reply before the connection is closed under it (closing at once with unread
        bytes would reset the connection and lose the reply)."""
        self.state = CLOSED
        server = self.server
        server.header_due.disarm(self)
        server.idle_due.disarm(self)
        self.pause(P_CLOSING)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if linger and transport.can_write_eof():
            transport.write_eof()
            server.linger_due.arm(self)
            server.connection_lingering(self)
        else:
            transport.close()

    def close(self) -> None:
        """Close once what was written is sent."""
        self.state = CLOSED
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.state = CLOSED
        if self.transport is not None:
            self.transport.abort()
