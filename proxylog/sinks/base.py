"""The sink contract: the `Sink` protocol and its optional extensions, the errors a sink
raises to say what became of a batch, and the counters its worker keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from proxylog.errors import SinkError


class Sink(Protocol):
    """A destination for NDJSON lines, used from one worker thread. `write` delivers a whole
    batch or raises SinkError (or a subclass below); both methods may block."""

    name: str

    def write(self, lines: list[bytes]) -> None: ...

    def close(self) -> None: ...


class Reopenable(Protocol):
    """A sink holding files that an external logrotate may move away."""

    def reopen(self) -> None: ...


class Ticking(Protocol):
    """A sink with periodic housekeeping (an fsync interval): `tick` runs when the sink has
    been idle for `tick_interval` seconds (None: never)."""

    tick_interval: float | None

    def tick(self) -> None: ...


class PartialFailure(SinkError):
    """Part of a batch was delivered; `remaining` (in order) still needs delivery. Retryable."""

    def __init__(self, message: str, remaining: list[bytes]) -> None:
        super().__init__(message, retryable=True)
        self.remaining = remaining


class PoisonBatch(SinkError):
    """The receiver refused `rejected` lines for their content, with a reason each; every
    other line was delivered. The worker quarantines the rejected lines and counts them."""

    def __init__(self, message: str, rejected: list[tuple[bytes, str]]) -> None:
        super().__init__(message, retryable=False)
        self.rejected = rejected


@dataclass(slots=True)
class SinkStats:
    """Counters and health for one sink. Each field is written by one thread (queue drops by
    the event loop, the rest under the worker's threads), so reads need no lock."""

    submitted: int = 0
    written: int = 0
    queue_drops: int = 0
    failed_drops: int = 0
    quarantined: int = 0
    retries: int = 0
    failures: int = 0
    spooled: int = 0
    spool_depth: int = 0
    spool_bytes: int = 0
    healthy: bool = True
    last_error: str | None = None
    last_error_at: float | None = None
    outage_since: float | None = None

    @property
    def dropped(self) -> int:
        """Records lost for good: refused by a full queue or by a permanent sink failure."""
        return self.queue_drops + self.failed_drops
