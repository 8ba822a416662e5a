"""The Sink protocol and the worker that gives every sink a bounded queue, batching and retry.

Each sink runs on its own daemon thread: the thread batches, writes with blocking I/O,
retries with backoff and jitter, and counts what it loses. The event loop only ever calls
`SinkWorker.submit`, which appends to a bounded deque: synchronous, O(1), never raises,
never waits. A stalled pipe, a slow disk or a dead collector stalls that sink's thread and
nothing else.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from proxylog.config.sinks import SinkSpec
from proxylog.errors import SinkError
from proxylog.record import encode_document, event_document

logger = logging.getLogger("proxylog.sinks")

RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 30.0
# After waking for a partial batch, wait this long for more: one write per few ms rather
# than one per request keeps thread wake-ups (and GIL handoffs) off the request path.
BATCH_LINGER_S = 0.005
POLL_S = 0.01


class Sink(Protocol):
    """A destination for NDJSON lines, used from one worker thread. `write` delivers a whole
    batch or raises SinkError; both methods may block."""

    name: str

    def write(self, lines: list[bytes]) -> None: ...

    def close(self) -> None: ...


class Reopenable(Protocol):
    """A sink holding files that an external logrotate may move away."""

    def reopen(self) -> None: ...


@dataclass(slots=True)
class SinkStats:
    """Counters for one sink. Each is written by one thread only (queue drops by the event
    loop, the rest by the sink's thread), so reads are consistent without locks."""

    submitted: int = 0
    queue_drops: int = 0
    failed_drops: int = 0
    written: int = 0
    retries: int = 0
    failures: int = 0
    healthy: bool = True
    last_error: str | None = None

    @property
    def dropped(self) -> int:
        """Records lost for good: refused by a full queue or by a permanent sink failure."""
        return self.queue_drops + self.failed_drops


class SinkWorker:
    """Owns one sink: bounded queue, batching, retry with backoff and jitter, drop accounting.

    When records are lost, the next successful write is preceded by a ``records_dropped``
    marker carrying the exact count since the last marker.
    """

    def __init__(
        self,
        sink: Sink,
        spec: SinkSpec,
        *,
        clock: Callable[[], float] = time.time,
        linger: float = BATCH_LINGER_S,
        retry_initial: float = RETRY_INITIAL_S,
    ) -> None:
        self.sink = sink
        self.spec = spec
        self.stats = SinkStats()
        self._clock = clock
        self._linger = linger
        self._retry_initial = retry_initial
        self._queue: collections.deque[bytes] = collections.deque()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._reopen = threading.Event()
        self._in_flight = 0
        self._reported_drops = 0
        self._drops_since: float | None = None
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def depth(self) -> int:
        """Records waiting in memory (queued plus the batch being written)."""
        return len(self._queue) + self._in_flight

    def submit(self, line: bytes) -> None:
        """Queue one NDJSON line; when the queue is full the line is counted as dropped."""
        self.stats.submitted += 1
        if len(self._queue) >= self.spec.queue:
            self.stats.queue_drops += 1
            return
        self._queue.append(line)
        if not self._wakeup.is_set():
            self._wakeup.set()

    def reopen(self) -> None:
        """Have the sink's thread reopen its files before its next write."""
        self._reopen.set()
        self._wakeup.set()

    def start(self) -> None:
        """Start the sink's thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=f"proxylog-sink-{self.name}", daemon=True)
            self._thread.start()

    def _main(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.wait()
            self._wakeup.clear()
            if self._reopen.is_set():
                self._reopen.clear()
                self._do_reopen()
            if 0 < len(self._queue) < self.spec.batch and not self._stopping.is_set():
                time.sleep(self._linger)
            while self._queue and not self._stopping.is_set():
                count = min(self.spec.batch, len(self._queue))
                self._in_flight = count
                batch = [self._queue.popleft() for _ in range(count)]
                self._deliver(batch)
                self._in_flight = 0

    def _do_reopen(self) -> None:
        reopen = getattr(self.sink, "reopen", None)
        if reopen is None:
            return
        try:
            reopen()
        except (SinkError, OSError) as e:
            self._note_failure(e if isinstance(e, SinkError) else SinkError(str(e)))

    def _unreported_drops(self) -> int:
        return self.stats.dropped - self._reported_drops

    def _marker(self) -> bytes | None:
        unreported = self._unreported_drops()
        if not unreported:
            return None
        doc = event_document(
            "records_dropped",
            "process",
            sink=self.name,
            dropped={"count": unreported, "total": self.stats.dropped, "since": self._drops_since},
        )
        return encode_document(doc)

    def _deliver(self, batch: list[bytes]) -> None:
        delay = self._retry_initial
        while True:
            if self._unreported_drops() and self._drops_since is None:
                self._drops_since = self._clock()
            dropped_before = self.stats.dropped
            marker = self._marker()
            try:
                self.sink.write([marker, *batch] if marker else batch)
            except SinkError as e:
                self._note_failure(e)
                if not e.retryable:
                    self.stats.failed_drops += len(batch)
                    return
                self.stats.retries += 1
                if self._stopping.wait(delay * random.uniform(0.5, 1.0)):
                    self.stats.failed_drops += len(batch)  # shutting down mid-retry
                    return
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except Exception as e:  # a sink bug must not kill the thread or lose the count
                logger.exception("sink %s crashed writing a batch", self.name)
                self._note_failure(SinkError(f"{type(e).__name__}: {e}", retryable=False))
                self.stats.failed_drops += len(batch)
                return
            if marker:
                self._reported_drops = dropped_before
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
        self.start()
        deadline = time.monotonic() + timeout
        while self.depth:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_S)
        return True

    async def close(self, timeout: float) -> int:
        """Flush for up to `timeout`, stop the thread and close the sink; returns the number
        of records left undelivered (they are counted as dropped and logged)."""
        failed_before = self.stats.failed_drops
        await self.flush(timeout)
        self._stopping.set()
        self._wakeup.set()
        thread, self._thread = self._thread, None
        stuck = 0
        if thread is not None:
            await asyncio.to_thread(thread.join, max(timeout, 0.1))
            if thread.is_alive():  # blocked in a write: abandon the daemon thread and its batch
                logger.error("sink %s: still blocked in a write at shutdown", self.name)
                stuck = self._in_flight
        self.stats.failed_drops += len(self._queue) + stuck
        self._queue.clear()
        lost = self.stats.failed_drops - failed_before
        if lost:
            logger.error("sink %s: %d records undelivered at shutdown", self.name, lost)
        if self._unreported_drops():
            logger.error(
                "sink %s: %d records were dropped in all (no marker could be written for %d)",
                self.name,
                self.stats.dropped,
                self._unreported_drops(),
            )
        if thread is None or not thread.is_alive():
            try:
                await asyncio.wait_for(asyncio.to_thread(self.sink.close), max(timeout, 0.1))
            except (TimeoutError, SinkError, OSError) as e:
                logger.error("sink %s: close failed: %s", self.name, e or type(e).__name__)
        return lost
