"""The Sink protocol and the worker that gives every sink a bounded queue, batching and retry.

The request path only ever calls `SinkWorker.submit`, which is synchronous, O(1) and never
raises. Everything that can wait or fail happens in the worker task.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from proxylog.config.sinks import SinkSpec
from proxylog.errors import SinkError
from proxylog.record import encode_document, event_document

logger = logging.getLogger("proxylog.sinks")

RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 30.0


class Sink(Protocol):
    """A destination for NDJSON lines. `write` delivers a whole batch or raises SinkError."""

    name: str

    async def write(self, lines: list[bytes]) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class SinkStats:
    """Counters for one sink; `dropped` counts records lost for good, never silently."""

    submitted: int = 0
    written: int = 0
    dropped: int = 0
    retries: int = 0
    failures: int = 0
    healthy: bool = True
    last_error: str | None = None


class SinkWorker:
    """Owns one sink: bounded queue, batching, retry with backoff and jitter, drop accounting.

    When records are lost (queue full, or a batch the sink refused for good), the next
    successful write is preceded by a ``records_dropped`` marker carrying the exact count.
    """

    def __init__(
        self,
        sink: Sink,
        spec: SinkSpec,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.sink = sink
        self.spec = spec
        self.stats = SinkStats()
        self._clock = clock
        self._sleep = sleep
        self._queue: collections.deque[bytes] = collections.deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._unreported_drops = 0
        self._drops_since: float | None = None
        self._in_flight = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, line: bytes) -> None:
        """Queue one NDJSON line; when the queue is full the line is counted as dropped."""
        self.stats.submitted += 1
        if len(self._queue) >= self.spec.queue:
            self._count_drops(1)
            return
        self._queue.append(line)
        self._idle.clear()
        self._wakeup.set()

    def _count_drops(self, count: int) -> None:
        self.stats.dropped += count
        if self._unreported_drops == 0:
            self._drops_since = self._clock()
        self._unreported_drops += count

    def start(self) -> None:
        """Start the worker task on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"proxylog sink {self.name}"
            )

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(self.spec.batch, len(self._queue)))]
            self._in_flight = len(batch)
            await self._deliver(batch)
            self._in_flight = 0

    def _marker(self) -> bytes | None:
        if not self._unreported_drops:
            return None
        doc = event_document(
            "records_dropped",
            "process",
            sink=self.name,
            dropped={"count": self._unreported_drops, "since": self._drops_since},
        )
        return encode_document(doc)

    async def _deliver(self, batch: list[bytes]) -> None:
        delay = RETRY_INITIAL_S
        while True:
            marker = self._marker()
            try:
                await self.sink.write([marker, *batch] if marker else batch)
            except SinkError as e:
                self._note_failure(e)
                if not e.retryable:
                    self._count_drops(len(batch))
                    return
                self.stats.retries += 1
                await self._sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except Exception as e:  # a sink bug must not kill the worker or lose the count
                logger.exception("sink %s crashed writing a batch", self.name)
                self._note_failure(SinkError(f"{type(e).__name__}: {e}", retryable=False))
                self._count_drops(len(batch))
                return
            if marker:
                self._unreported_drops = 0
                self._drops_since = None
            self.stats.written += len(batch)
            if not self.stats.healthy:
                logger.warning("sink %s recovered", self.name)
            self.stats.healthy = True
            return

    def _note_failure(self, error: SinkError) -> None:
        self.stats.failures += 1
        if self.stats.healthy or self.stats.last_error != str(error):
            logger.error("sink %s: %s", self.name, error)
        self.stats.healthy = False
        self.stats.last_error = str(error)

    async def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is delivered; False if `timeout` ran out."""
        if self._task is None:
            self.start()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float) -> int:
        """Flush for up to `timeout`, stop, and close the sink; returns records left undelivered."""
        await self.flush(timeout)
        lost = len(self._queue) + self._in_flight
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if lost:
            self.stats.dropped += lost
            logger.error("sink %s: %d records undelivered at shutdown", self.name, lost)
        if self._unreported_drops:
            logger.error(
                "sink %s: %d records were dropped and no marker could be written",
                self.name,
                self._unreported_drops,
            )
        try:
            await asyncio.wait_for(self.sink.close(), max(timeout, 0.1))
        except (TimeoutError, SinkError, OSError) as e:
            logger.error("sink %s: close failed: %s", self.name, e or type(e).__name__)
        return lost
