"""Slow and greedy clients on the mitmproxy plane, bounded as the fast plane bounds them: a
request body's pace (`timeouts.body_rate` over `body_window`: BodyPace, kept by
GuardedHttp1Server), a response left unread (`timeouts.write`), the concurrent connections
of one client address (`limits.connections_per_client`), and a banned client's other open
connections (closed once the ban is imposed). ClientGuard is the addon's per-connection part."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import http
from mitmproxy.proxy import commands

from proxylog.deadlines import Deadlines
from proxylog.mitm import connections
from proxylog.mitm.flows import state_of

logger = logging.getLogger("proxylog")

# Client connections whose next request head is held until they read their earlier
# responses (GuardedHttp1Server), each with what records that head as timed out: a write
# timeout that ends such a connection records it.
HELD: dict[Any, Callable[[str], None]] = {}


class BodyPace:
    """One request body as it arrives: the bytes of the current window (framing included,
    as the fast plane counts them), the payload so far, and the wakeup ending the window."""

    __slots__ = ("payload", "request", "wakeup", "window_bytes")

    def __init__(self, request: http.Request | None) -> None:
        self.request = request
        self.window_bytes = 0
        self.payload = 0
        self.wakeup: commands.RequestWakeup | None = None

    def next_window(self, window: float) -> commands.RequestWakeup:
        """Start a window: the wakeup to request, which `body_window_ended` is given back."""
        self.window_bytes = 0
        self.wakeup = commands.RequestWakeup(window)
        return self.wakeup


class ClientGuard:
    """The client connections the addon sees, for what the fast plane bounds per connection.

    - `connected` counts a connection against its address (`peername`, as on the fast plane);
      past `connections_per_client` it is refused at once unless the address is a trusted
      proxy. A connection that got proxylog's final reply (`uncount`) no longer counts.
    - Writes: the client transport's own flow control says when its buffer is full
      (pause_writing) and drained again; a client that stays paused `write_due.timeout`
      seconds is dropped and the request it was reading is recorded `client_timeout`.
    - `banned`: once a ban is imposed, every open connection of a client an enforced ban now
      covers is closed: at once when no request is in flight on it, else once its response
      has gone. Trusted proxies' connections stay (they carry other clients too).
    """

    def __init__(self, write_timeout: float) -> None:
        self.write_due: Deadlines[Any] = Deadlines(write_timeout)
        self._per_ip: dict[str, int] = {}
        self._counted: dict[Any, str] = {}  # connection -> the address it counts against
        self._open: set[Any] = set()
        self._busy: dict[Any, http.HTTPFlow] = {}  # connection -> its request in flight
        self._closing: set[Any] = set()  # banned while busy: closed after that request
        self._ban_sweep = False

    def connected(self, client: Any, cap: int, trusted: Callable[[str], bool]) -> bool:
        """Count a new connection; False when it is over its address's cap (refuse it)."""
        ip = str(client.peername[0])
        self._open.add(client)
        self._counted[client] = ip
        count = self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        if 0 < cap < count and not trusted(ip):
            return False
        self._watch_writes(client)
        return True

    def uncount(self, client: Any) -> None:
        """`client` got proxylog's final reply and only lingers so it can read it."""
        ip = self._counted.pop(client, None)
        if ip is not None:
            count = self._per_ip[ip] - 1
            if count > 0:
                self._per_ip[ip] = count
            else:
                del self._per_ip[ip]

    def disconnected(self, client: Any) -> None:
        HELD.pop(client, None)
        self.uncount(client)
        self._open.discard(client)
        self._busy.pop(client, None)
        self._closing.discard(client)
        self.write_due.disarm(client)

    def closing(self, client: Any) -> bool:
        """Whether `client` is to close after its current response (banned meanwhile)."""
        return client in self._closing

    def begun(self, flow: http.HTTPFlow) -> None:
        self._busy[flow.client_conn] = flow

    def ended(self, flow: http.HTTPFlow) -> None:
        """`flow` is over; a connection banned meanwhile closes once its reply is written
        (on the next turn of the loop: mitmproxy writes it when this hook returns)."""
        client = flow.client_conn
        if self._busy.get(client) is flow:
            del self._busy[client]
        if client in self._closing:
            self._closing.discard(client)
            asyncio.get_running_loop().call_soon(connections.close_client, client, "proxylog: client banned")

    # -- unread responses ---------------------------------------------------------------------

    def _watch_writes(self, client: Any) -> None:
        transport = connections.client_transport(client)
        if transport is None:
            return
        protocol = transport.get_protocol()
        pause, resume, due = protocol.pause_writing, protocol.resume_writing, self.write_due

        def paused() -> None:
            pause()
            due.arm(client)

        def resumed() -> None:
            resume()
            due.disarm(client)

        protocol.pause_writing, protocol.resume_writing = paused, resumed

    def write_expired(self, client: Any) -> None:
        """`client` left its response unread for the write timeout: dropped, and the request
        it was being answered recorded as `client_timeout`."""
        flow = self._busy.get(client)
        state = state_of(flow) if flow is not None else None
        timeout = self.write_due.timeout
        if state is not None and not state.done:
            state.fail("client_timeout", f"the client did not read its response for {timeout:g} s")
        elif client in HELD:
            HELD.pop(client)(f"the client did not read its earlier responses for {timeout:g} s")
        connections.abort_client(client, "proxylog: response left unread")

    # -- bans ---------------------------------------------------------------------------------

    def banned(self, shut: Callable[[str], bool]) -> None:
        """A ban was imposed: on the next turn of the loop (once however many came), close the
        connections of every address `shut` names."""
        if self._open and not self._ban_sweep:
            self._ban_sweep = True
            asyncio.get_running_loop().call_soon(self._close_banned, shut)

    def _close_banned(self, shut: Callable[[str], bool]) -> None:
        self._ban_sweep = False
        verdicts: dict[str, bool] = {}
        try:
            for client in list(self._open):
                ip = str(client.peername[0])
                closes = verdicts.get(ip)
                if closes is None:
                    closes = verdicts[ip] = shut(ip)
                if not closes:
                    continue
                if client in self._busy:
                    self._closing.add(client)
                else:
                    connections.close_client(client, "proxylog: client banned")
        except Exception:
            logger.exception("internal error closing a banned client's connections")
