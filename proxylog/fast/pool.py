"""A bounded pool of idle keep-alive connections to Puma, and the connects that fill it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from proxylog.deadlines import Deadlines
from proxylog.fast.upstream import UpstreamConn


class Waiter(Protocol):
    """A client connection waiting for a connection to Puma."""

    def upstream_ready(self, up: UpstreamConn) -> bool:
        """Use `up`; False when no longer wanted (the pool keeps it)."""
        ...

    def upstream_unavailable(self, message: str) -> None: ...


class Pool:
    """At most `size` idle connections, most recently used first (the warmest, and the least
    likely to have hit Puma's persistent timeout); each is closed after `idle` seconds. The
    number of busy connections is not bounded here: Puma's own backlog queues them."""

    def __init__(
        self,
        host: str,
        port: int,
        size: int,
        idle: float,
        connect_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self.host, self.port = host, port
        self.size = size
        self.connect_timeout = connect_timeout
        self.due: Deadlines[UpstreamConn] = Deadlines(idle, clock)
        self._idle: list[UpstreamConn] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def acquire(self) -> UpstreamConn | None:
        """An idle connection, or None (then `connect`)."""
        idle = self._idle
        while idle:
            up = idle.pop()
            self.due.disarm(up)
            if not up.lost:
                return up
        return None

    def release(self, up: UpstreamConn) -> None:
        """Keep `up` for the next exchange, or close it when the pool is full or closed."""
        if self._closed or up.lost or len(self._idle) >= self.size:
            up.close()
            return
        self._idle.append(up)
        self.due.arm(up)

    def discard(self, up: UpstreamConn) -> None:
        """Forget `up` (it closed, or spoke while idle)."""
        self.due.disarm(up)
        if up in self._idle:
            self._idle.remove(up)

    def expire(self, now: float) -> None:
        """Close the connections idle for too long (called by the server's sweep)."""
        for up in self.due.expired(now):
            self.discard(up)
            up.close()

    def connect(self, waiter: Waiter) -> None:
        """Open a fresh connection for `waiter` in an owned task; it gets `upstream_ready` or
        `upstream_unavailable`."""
        task = asyncio.get_running_loop().create_task(self._connect(waiter))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, waiter: Waiter) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout or None):
                _, up = await loop.create_connection(lambda: UpstreamConn(self), self.host, self.port)
        except TimeoutError:
            waiter.upstream_unavailable(f"connecting to {self.host}:{self.port} timed out")
            return
        except OSError as e:
            waiter.upstream_unavailable(f"cannot connect to {self.host}:{self.port}: {e.strerror or e}")
            return
        if not waiter.upstream_ready(up):
            self.release(up)

    async def close(self) -> None:
        """Cancel pending connects (awaiting them) and close every idle connection."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for up in self._idle:
            up.close()
        self._idle.clear()
        self.due.clear()
