"""What the fast plane is told: where to listen, where Puma is, its limits and timeouts."""

from __future__ import annotations

from dataclasses import dataclass

from proxylog.pipeline.headers import PROTECTED_FROM_CONNECTION


@dataclass(frozen=True, slots=True)
class FastOptions:
    """The fast plane's settings; times in seconds, sizes in bytes, 0 turns a timeout off.

    `header_timeout` bounds the time from a connection's first byte of a request head (or its
    opening) to the end of that head; `idle_timeout` how long a keep-alive connection may
    wait for the next request's first byte. `upstream_timeout` runs from the request's end to
    Puma's response head (504). A request body must arrive at `body_rate` bytes/s or more,
    averaged over each `body_window` (408). `write_timeout` is how long a client may leave
    its response unread (its socket buffer full) before it is closed. `pool_size` idle
    keep-alive connections to Puma are kept, each at most `pool_idle` (below Puma's 20 s
    persistent timeout). `linger` is how long a refused client gets to read its reply before
    the connection is closed under it.
    """

    upstream_host: str = "127.0.0.1"
    upstream_port: int = 3000
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    reuse_port: bool = False
    backlog: int = 1024
    header_timeout: float = 10.0
    idle_timeout: float = 120.0
    upstream_timeout: float = 60.0
    connect_timeout: float = 5.0
    body_rate: int = 1024
    body_window: float = 10.0
    write_timeout: float = 60.0
    drain_timeout: float = 30.0
    linger: float = 2.0
    header_bytes: int = 64 * 1024
    body_size: int | None = None
    stream_threshold: int = 1024 * 1024
    pool_size: int = 32
    pool_idle: float = 15.0
    connections_per_client: int = 64
    protected_headers: frozenset[bytes] = PROTECTED_FROM_CONNECTION

    def sweep_interval(self) -> float:
        """How often deadlines are checked: a fifth of the shortest timeout, within 10-500 ms."""
        timeouts = [
            t
            for t in (
                self.header_timeout,
                self.idle_timeout,
                self.upstream_timeout,
                self.body_window,
                self.write_timeout,
                self.linger,
                self.pool_idle,
            )
            if t > 0
        ]
        return max(0.01, min([0.5, *(t / 5 for t in timeouts)]))
