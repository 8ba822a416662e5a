"""The fast plane's server: the listening socket, per-client connection counts, the one
deadline sweep, the pool to Puma, drain and close."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable

from proxylog.deadlines import Deadlines
from proxylog.fast.client import ClientConn
from proxylog.fast.contract import Handler
from proxylog.fast.options import FastOptions
from proxylog.fast.pool import Pool
from proxylog.fast.relay import Relay

logger = logging.getLogger("proxylog.fast")


# Slow bodies cut per turn of the event loop when many windows end at once.
SWEEP_BATCH = 8


class FastServer:
    """An HTTP/1.1 reverse proxy in front of Puma that hands every request to `handler`.
    Nothing runs until `start`; `close` stops and awaits everything it started."""

    def __init__(
        self, options: FastOptions, handler: Handler, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.options = options
        self.handler = handler
        self.clock = clock
        self.draining = False
        self.pool = Pool(
            options.upstream_host,
            options.upstream_port,
            options.pool_size,
            options.pool_idle,
            options.connect_timeout,
            clock,
        )
        self.header_due: Deadlines[ClientConn] = Deadlines(options.header_timeout, clock)
        self.idle_due: Deadlines[ClientConn] = Deadlines(options.idle_timeout, clock)
        self.write_due: Deadlines[ClientConn] = Deadlines(options.write_timeout, clock)
        self.linger_due: Deadlines[ClientConn] = Deadlines(options.linger, clock)
        self.connection_deadlines = (self.header_due, self.idle_due, self.write_due, self.linger_due)
        self.upstream_due: Deadlines[Relay] = Deadlines(options.upstream_timeout, clock)
        self.body_due: Deadlines[Relay] = Deadlines(options.body_window, clock)
        self._connections: set[ClientConn] = set()
        self._per_client: dict[str, int] = {}
        self._counted: set[ClientConn] = set()  # the connections _per_client counts
        self._inflight: set[Relay] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._ban_sweep = False

    async def start(self) -> None:
        """Bind and listen (SO_REUSEPORT with `options.reuse_port`, for worker processes);
        raises OSError when the address cannot be bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientConn(self),
            self.options.listen_host,
            self.options.listen_port,
            reuse_port=self.options.reuse_port or None,
            backlog=self.options.backlog,
        )
        self._sweeper = loop.create_task(self._sweep())

    def reconfigure(self, options: FastOptions) -> None:
        """Apply reloaded limits and timeouts to what starts from now on (the addresses and
        the pool's size need a restart). Deadlines armed already keep theirs."""
        self.options = options
        for deadlines, timeout in (
            (self.header_due, options.header_timeout),
            (self.idle_due, options.idle_timeout),
            (self.write_due, options.write_timeout),
            (self.linger_due, options.linger),
            (self.upstream_due, options.upstream_timeout),
            (self.body_due, options.body_window),
        ):
            deadlines.retune(timeout)

    def listen_addrs(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs."""
        if self._server is None:
            return []
        return [_host_port(sock) for sock in self._server.sockets]

    @property
    def inflight(self) -> int:
        """Exchanges begun and not yet finished."""
        return len(self._inflight)

    # -- bookkeeping (called by connections and relays) ----------------------------------------

    def connection_opened(self, conn: ClientConn) -> bool:
        """Count `conn`; False when its client is over `connections_per_client` (and is
        not a trusted proxy): the connection is closed at once."""
        self._connections.add(conn)
        self._counted.add(conn)
        ip = conn.peer[0]
        count = self._per_client.get(ip, 0) + 1
        self._per_client[ip] = count
        cap = self.options.connections_per_client
        return not (0 < cap < count) or self.handler.is_trusted(ip)

    def connection_closed(self, conn: ClientConn) -> None:
        self._connections.discard(conn)
        self.connection_lingering(conn)

    def connection_lingering(self, conn: ClientConn) -> None:
        """`conn` got its last reply and only waits for the client to read it (or for
        `linger`): it no longer counts toward its client's `connections_per_client`, so a
        client whose requests were refused is not then locked out for the linger time."""
        if conn in self._counted:
            self._counted.discard(conn)
            ip = conn.peer[0]
            count = self._per_client.get(ip, 0) - 1
            if count > 0:
                self._per_client[ip] = count
            else:
                self._per_client.pop(ip, None)

    def banned(self) -> None:
        """A ban was imposed: on the next turn of the loop (once however many came), end the
        connections of every client an enforced ban now covers, idle ones at once and busy
        ones after their response. A trusted proxy's stay: they carry other clients too."""
        if self._connections and not self._ban_sweep:
            self._ban_sweep = True
            asyncio.get_running_loop().call_soon(self._close_banned)

    def _close_banned(self) -> None:
        self._ban_sweep = False
        handler, verdicts = self.handler, dict[str, bool]()
        for conn in list(self._connections):
            ip = conn.peer[0]
            closes = verdicts.get(ip)
            if closes is None:
                closes = verdicts[ip] = not handler.is_trusted(ip) and handler.ban_enforced(ip)
            if closes:
                conn.end_soon()

    def exchange_begun(self, relay: Relay) -> None:
        self._inflight.add(relay)
        self._idle.clear()

    def exchange_finished(self, relay: Relay) -> None:
        """Handler.finish for `relay`'s exchange (the relay calls it once)."""
        self.upstream_due.disarm(relay)
        self.body_due.disarm(relay)
        self._inflight.discard(relay)
        if not self._inflight:
            self._idle.set()
        self.handler.finish(relay.ex)

    # -- deadlines ----------------------------------------------------------------------------

    async def _sweep(self) -> None:
        interval = self.options.sweep_interval()
        while True:
            await asyncio.sleep(interval)
            now = self.clock()
            self._sweep_connections(now)
            # Slow bodies that began together end together: each cut is a reply, a record and
            # a close, so they are cut a few at a time, other clients served in between.
            # (body_expired checks the relay's state: one finished meanwhile is left alone.)
            ended = self.body_due.expired(now)
            for start in range(0, len(ended), SWEEP_BATCH):
                if start:
                    await asyncio.sleep(0)
                _expire(ended[start : start + SWEEP_BATCH], Relay.body_expired)

    def sweep(self, now: float) -> None:
        """Act on every deadline passed at `now` (tests call it; the sweep task does the same,
        cutting slow bodies in batches)."""
        self._sweep_connections(now)
        _expire(self.body_due.expired(now), Relay.body_expired)

    def _sweep_connections(self, now: float) -> None:
        _expire(self.header_due.expired(now), ClientConn.header_expired)
        _expire(self.idle_due.expired(now), ClientConn.idle_expired)
        _expire(self.write_due.expired(now), ClientConn.write_expired)
        _expire(self.linger_due.expired(now), ClientConn.linger_expired)
        _expire(self.upstream_due.expired(now), Relay.upstream_expired)
        self.pool.expire(now)

    # -- shutdown ---------------------------------------------------------------------------

    async def drain(self, timeout: float) -> bool:
        """Stop accepting, close idle keep-alive connections now, answer requests that still
        arrive with 503, and wait up to `timeout` s for in-flight exchanges; True if none is
        left."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.drain()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def abandon_inflight(self) -> None:
        """End every exchange still in flight as `shutdown` (each gets its finish)."""
        for relay in list(self._inflight):
            relay.abandon()

    async def close(self) -> None:
        """Abandon what is in flight, close every connection and the listener, and cancel
        and await the sweep and pending connects."""
        self.draining = True
        self.abandon_inflight()
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await self.pool.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


def _expire[T](items: Iterable[T], action: Callable[[T], None]) -> None:
    for item in items:
        try:
            action(item)
        except Exception:  # one broken connection must not stop the sweep for the others
            logger.exception("fast plane: deadline handling failed")


def _host_port(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]), int(name[1])
