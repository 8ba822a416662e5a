"""The worker that gives every sink a bounded queue, batching, retry, an on-disk overflow
spool and exact loss accounting.

Each sink has a writer thread (batch, write with blocking I/O, retry with backoff and
jitter) and, with ``overflow: spool``, a pump thread that moves the queue's oldest records
to disk whenever the sink is failing or the queue passes half full, so a stalled pipe or a
dead collector costs disk, not records. The event loop only ever calls `SinkWorker.submit`,
which appends to a bounded deque: synchronous, O(1), never raises, never waits.

Order is kept: the spool only ever holds records older than those still in memory, and the
writer drains the spool before memory. Whatever is lost is counted exactly, and the next
write to the sink starts with a ``records_dropped`` marker carrying the count.

The loss markers and the quarantine file live in `_losses`, the spool side in `_overflow`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from proxylog.config.sinks import SinkSpec
from proxylog.errors import SinkError
from proxylog.sinks.base import PartialFailure, PoisonBatch, Sink, SinkStats
from proxylog.sinks.losses import LossLedger, quarantine_path_for
from proxylog.sinks.overflow import Overflow, spool_for

logger = logging.getLogger("proxylog.sinks")

# After waking for a partial batch, wait this long for more: one write per few ms rather
# than one per request keeps thread wake-ups (and GIL handoffs) off the request path.
BATCH_LINGER_S = 0.005
POLL_S = 0.01
ADOPT_EVERY_S = 5.0
STUCK_S = 1.0  # at shutdown, a write blocked this long (a stalled pipe) stops the flush


class SinkWorker:
    """Owns one sink: bounded queue, batching, retry with backoff and jitter, overflow to a
    spool (or drops with a count), quarantine of poison lines, and markers for every loss.

    `state_dir` roots the default spool and quarantine paths (``spool/<name>``,
    ``quarantine/<name>.ndjson``) when the spec names none.
    """

    def __init__(
        self,
        sink: Sink,
        spec: SinkSpec,
        *,
        state_dir: str | None = None,
        clock: Callable[[], float] = time.time,
        linger: float = BATCH_LINGER_S,
        retry_initial: float | None = None,
        clean: Callable[[str], str] = str,
    ) -> None:
        """`clean` redacts error texts (they can quote a collector's reply) before they reach
        markers, status, alerts or the log."""
        self.sink = sink
        self._clean = clean
        self.spec = spec
        self.stats = SinkStats()
        self._clock = clock
        self._linger = linger
        self._retry_initial = spec.retry.initial if retry_initial is None else retry_initial
        self._retry_max = max(spec.retry.max, self._retry_initial)
        self._queue: collections.deque[bytes] = collections.deque()
        self._high_water = max(spec.queue // 2, 1)
        self._order = threading.Lock()  # writer vs pump: who takes the queue's head
        spool = spool_for(spec, state_dir)
        self._overflow = (
            None
            if spool is None
            else Overflow(spec.name, spool, self._queue, self._order, self.stats, spec.batch)
        )
        self._ledger = LossLedger(
            spec.name, self.stats, clock, quarantine_path_for(spec, state_dir), spec.schema
        )
        self._wakeup = threading.Event()
        self._pump_wakeup = threading.Event()
        self._stopping = threading.Event()
        self._reopen = threading.Event()
        self._hand: list[bytes] = []  # the batch the writer holds
        self._hand_spooled = 0  # how many of them were read from the spool (uncommitted)
        self._permanent = False  # the last failure was not retryable: spilling would not help
        self._write_since: float | None = None  # monotonic start of the write in progress
        self._threads: list[threading.Thread] = []

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def quarantine_path(self) -> str | None:
        """Where refused records go (None: nowhere, they count as dropped)."""
        return self._ledger.quarantine_path

    @property
    def depth(self) -> int:
        """Records waiting in memory (queued plus the batch being written)."""
        return len(self._queue) + len(self._hand) - self._hand_spooled

    @property
    def backlog(self) -> int:
        """Records not yet delivered: in memory and in the spool."""
        return self.depth + (self._overflow.spool.depth if self._overflow else 0)

    def snapshot(self) -> dict[str, Any]:
        """Counters and health as plain values, for a status or metrics endpoint."""
        return {
            **asdict(self.stats),
            "name": self.name,
            "type": self.spec.type,
            "dropped": self.stats.dropped,
            "queue_depth": self.depth,
            "queue_capacity": self.spec.queue,
            "overflow": self.spec.overflow,
            "spool_path": self._overflow.spool.last_path if self._overflow else None,
        }

    def submit(self, line: bytes) -> None:
        """Queue one NDJSON line; when the queue is full the line is counted as dropped."""
        self.stats.submitted += 1
        queue = self._queue
        if len(queue) >= self.spec.queue:
            self.stats.queue_drops += 1
            return
        queue.append(line)
        if not self._wakeup.is_set():
            self._wakeup.set()
        if (
            self._overflow is not None
            and (len(queue) >= self._high_water or not self.stats.healthy)
            and not self._pump_wakeup.is_set()
        ):
            self._pump_wakeup.set()

    def reopen(self) -> None:
        """Have the sink's thread reopen its files before its next write."""
        self._reopen.set()
        self._wakeup.set()

    def discard(self) -> None:
        """Release a worker that never started (a reload that failed after building it)."""
        try:
            self.sink.close()
        except Exception as e:
            logger.error("sink %s: close failed: %s", self.name, e)

    def start(self) -> None:
        """Start the sink's threads (idempotent)."""
        if self._threads:
            return
        targets = [("writer", self._run_writer)]
        if self._overflow is not None:
            targets.append(("spool", self._run_pump))
        for role, target in targets:
            thread = threading.Thread(target=target, name=f"proxylog-sink-{role}-{self.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run_writer(self) -> None:
        self._guarded(self._writer_loop)

    def _guarded(self, loop: Callable[[], None]) -> None:
        """Run a thread's loop; a bug in it is logged and the loop restarts (never a dead sink)."""
        while not self._stopping.is_set():
            try:
                loop()
                return
            except Exception as e:
                logger.exception("sink %s: worker thread error", self.name)
                self._note_failure(SinkError(f"worker error: {type(e).__name__}: {e}"))
                self._stopping.wait(1.0)

    def _writer_loop(self) -> None:
        overflow = self._overflow
        if overflow is not None:
            overflow.adopt()
        next_adopt = time.monotonic() + ADOPT_EVERY_S
        # Idle threads sleep until woken; they only poll for housekeeping they actually have.
        intervals = [getattr(self.sink, "tick_interval", None), ADOPT_EVERY_S if overflow else None]
        idle_wait = min((i for i in intervals if i), default=None)
        while not self._stopping.is_set():
            if self._reopen.is_set():
                self._do_reopen()
            batch = self._take()
            if batch:
                if not self._deliver():
                    return
                continue
            if self._ledger.unreported():
                self._deliver()  # a marker on its own: losses are announced even when idle
                if self._stopping.is_set():
                    return
            self._idle()
            if overflow is not None and time.monotonic() >= next_adopt:
                next_adopt = time.monotonic() + ADOPT_EVERY_S
                overflow.adopt()
            if self._wakeup.wait(idle_wait):
                self._wakeup.clear()
                if 0 < len(self._queue) < self.spec.batch and not self._stopping.is_set():
                    time.sleep(self._linger)

    def _take(self) -> list[bytes]:
        """The next batch into the writer's hand: from the spool while it holds records
        (they are older), else from memory."""
        with self._order:
            if self._hand:  # left by an interrupted delivery
                return self._hand
            overflow = self._overflow
            if overflow is not None and overflow.spool.depth:
                self._hand = overflow.read(self.spec.batch)
                self._hand_spooled = len(self._hand)
            else:
                count = min(self.spec.batch, len(self._queue))
                self._hand = [self._queue.popleft() for _ in range(count)]
                self._hand_spooled = 0
            return self._hand

    def _idle(self) -> None:
        tick = getattr(self.sink, "tick", None)
        if tick is not None:
            try:
                tick()
            except (SinkError, OSError) as e:
                self._note_failure(e if isinstance(e, SinkError) else SinkError(str(e)))

    def _do_reopen(self) -> None:
        self._reopen.clear()
        reopen = getattr(self.sink, "reopen", None)
        if reopen is None:
            return
        try:
            reopen()
        except Exception as e:  # a bad token file on SIGHUP must not kill the thread
            self._note_failure(e if isinstance(e, SinkError) else SinkError(f"reopen failed: {e}"))

    def _deliver(self) -> bool:
        """Write the hand until it is delivered, refused for good, or the worker stops
        (then the hand stays for `close` to spool); False when stopping."""
        ledger = self._ledger
        delay = self._retry_initial
        records = len(self._hand)
        pending = list(self._hand)
        while True:
            if self._reopen.is_set():
                self._do_reopen()
            markers, receipt = ledger.owed()
            self._write_since = time.monotonic()
            try:
                self.sink.write([*markers, *pending])
            except PartialFailure as e:
                # A marker still unwritten announces nothing yet: the next attempt carries a
                # fresh one in its place, so no marker is ever left in the hand (or repeated).
                unsent = set(markers).intersection(e.remaining)
                ledger.settle(receipt, unsent)
                pending = [line for line in e.remaining if line not in unsent]
                self._note_failure(e)
            except PoisonBatch as e:
                ledger.settle(receipt)
                rejected = [(line, reason) for line, reason in e.rejected if not ledger.is_marker(line)]
                self._write_since = None
                ledger.quarantine(rejected)
                self.stats.last_error = self._clean(str(e))
                self.stats.last_error_at = self._clock()
                self._finish(records - len(rejected))
                self._answered()
                return True
            except SinkError as e:
                ledger.retract(markers)
                self._note_failure(e)
                if not e.retryable:
                    self._permanent = True
                    return self._give_up(pending, records)
            except Exception as e:  # a sink bug must not kill the thread or lose the count
                logger.exception("sink %s crashed writing a batch", self.name)
                ledger.retract(markers)
                self._note_failure(SinkError(f"{type(e).__name__}: {e}", retryable=False))
                return self._give_up(pending, records)
            else:
                self._write_since = None
                ledger.settle(receipt)
                self._finish(records)
                self._answered()
                return True
            self._write_since = None
            self.stats.retries += 1
            if self._overflow is not None:
                self._pump_wakeup.set()  # failing: move the queue to disk meanwhile
            if not self._hand_spooled:
                self._hand = pending
            if self._stopping.wait(delay * random.uniform(0.5, 1.0)):
                return False
            delay = min(delay * 2, self._retry_max)

    def _give_up(self, pending: list[bytes], records: int) -> bool:
        self._write_since = None
        lost = sum(1 for line in pending if not self._ledger.is_marker(line))
        self.stats.failed_drops += lost
        self._finish(records - lost)
        return True

    def _finish(self, delivered: int) -> None:
        """The hand is done with: count what arrived and forget spooled lines."""
        self.stats.written += delivered
        self._ledger.clear()
        with self._order:
            if self._hand_spooled and self._overflow is not None:
                self._overflow.commit(self._hand_spooled)
            self._hand = []
            self._hand_spooled = 0

    def _answered(self) -> None:
        """The sink took the batch (whole, or all but the lines it refused): it works."""
        if not self.stats.healthy:
            logger.warning("sink %s recovered", self.name)
        self.stats.healthy = True
        self._permanent = False

    def _note_failure(self, error: SinkError) -> None:
        self.stats.failures += 1
        now = self._clock()
        text = self._clean(str(error))  # it can quote a collector's reply: it goes in markers
        if self.stats.healthy or self.stats.last_error != text:
            logger.error("sink %s: %s", self.name, text)
        if self.stats.outage_since is None and not isinstance(error, PoisonBatch):
            self._ledger.outage_began(now)
        self.stats.healthy = False
        self.stats.last_error = text
        self.stats.last_error_at = now

    def _run_pump(self) -> None:
        overflow = self._overflow
        assert overflow is not None
        self._guarded(lambda: overflow.pump(self._pump_wakeup, self._stopping, self._should_spill))

    def _should_spill(self) -> bool:
        """Memory is past half full, or the sink is failing and spilling would help."""
        queued = len(self._queue)
        return queued >= self._high_water or (queued > 0 and not self.stats.healthy and not self._permanent)

    async def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is delivered; False if `timeout` ran out."""
        return await self._flush(timeout, settle_on_disk=False)

    async def _flush(self, timeout: float, *, settle_on_disk: bool) -> bool:
        self.start()
        deadline = time.monotonic() + timeout
        while self.backlog or (self._ledger.unreported() and self.stats.healthy):
            if time.monotonic() >= deadline:
                return False
            if settle_on_disk and self._overflow is not None and self._stalled():
                return False  # failing or stuck: what is left goes to the spool for the next run
            await asyncio.sleep(POLL_S)
        return True

    def _stalled(self) -> bool:
        since = self._write_since
        return not self.stats.healthy or (since is not None and time.monotonic() - since > STUCK_S)

    async def close(self, timeout: float) -> int:
        """Flush for up to `timeout`, stop the threads, spool what is left (or count it as
        dropped) and close the sink; returns the number of records lost."""
        lost_before = self.stats.dropped
        deadline = time.monotonic() + timeout
        await self._flush(timeout, settle_on_disk=True)
        stalled = self._stalled()
        self._stopping.set()
        self._wakeup.set()
        self._pump_wakeup.set()
        threads, self._threads = self._threads, []
        for thread in threads:
            wait = 0.1 if stalled else max(deadline - time.monotonic(), 0.1)
            await asyncio.to_thread(thread.join, wait)
        stuck = any(thread.is_alive() for thread in threads)
        if stuck:
            logger.error("sink %s: still blocked in a write at shutdown", self.name)
        await asyncio.to_thread(self._persist_leftovers, max(timeout, 0.1))
        lost = self.stats.dropped - lost_before
        if lost:
            logger.error("sink %s: %d records lost at shutdown", self.name, lost)
        self._ledger.log_unannounced()
        if not stuck:
            try:
                await asyncio.wait_for(asyncio.to_thread(self.sink.close), max(timeout, 0.1))
            except (TimeoutError, SinkError, OSError) as e:
                # str(TimeoutError()) is empty: name the error instead
                logger.error("sink %s: close failed: %s", self.name, str(e) or type(e).__name__)
        return lost

    def _persist_leftovers(self, timeout: float) -> None:
        """Spool what memory still holds (the writer's hand first, it is older); with no spool,
        or when the spool refuses, count it as dropped."""
        hand = [] if self._hand_spooled else [line for line in self._hand if not self._ledger.is_marker(line)]
        queued = list(self._queue)
        self._queue.clear()
        # A spooled hand stays on disk for the next run; it no longer counts as in memory.
        self._hand, self._hand_spooled = [], 0
        overflow = self._overflow
        if overflow is None or not overflow.keep(hand, queued, self._ledger, timeout):
            self.stats.failed_drops += len(hand) + len(queued)
