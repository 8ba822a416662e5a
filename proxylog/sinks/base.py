"""The Sink protocol and the worker that gives every sink a bounded queue, batching, retry,
an on-disk overflow spool and exact loss accounting.

Each sink has a writer thread (batch, write with blocking I/O, retry with backoff and
jitter) and, with ``overflow: spool``, a pump thread that moves the queue's oldest records
to disk whenever the sink is failing or the queue passes half full, so a stalled pipe or a
dead collector costs disk, not records. The event loop only ever calls `SinkWorker.submit`,
which appends to a bounded deque: synchronous, O(1), never raises, never waits.

Order is kept: the spool only ever holds records older than those still in memory, and the
writer drains the spool before memory. Whatever is lost is counted exactly, and the next
write to the sink starts with a ``records_dropped`` marker carrying the count.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from proxylog.config.sinks import SinkSpec
from proxylog.errors import SinkError
from proxylog.record import encode_document, event_document
from proxylog.sinks._io import append_private
from proxylog.sinks._spool import Spool, spool_dir_name

logger = logging.getLogger("proxylog.sinks")

# After waking for a partial batch, wait this long for more: one write per few ms rather
# than one per request keeps thread wake-ups (and GIL handoffs) off the request path.
BATCH_LINGER_S = 0.005
POLL_S = 0.01
PUMP_RETRY_S = 0.5
ADOPT_EVERY_S = 5.0
STUCK_S = 1.0  # at shutdown, a write blocked this long (a stalled pipe) stops the flush


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
    ) -> None:
        self.sink = sink
        self.spec = spec
        self.stats = SinkStats()
        self._clock = clock
        self._linger = linger
        self._retry_initial = spec.retry.initial if retry_initial is None else retry_initial
        self._retry_max = max(spec.retry.max, self._retry_initial)
        self._spool: Spool | None = None
        if spec.overflow == "spool":
            if spec.spool or state_dir:
                base = spec.spool or os.path.join(state_dir or "", "spool", spool_dir_name(spec.name))
                self._spool = Spool(base, spec.spool_max)
            elif (
                spec.type != "custom"
            ):  # never guess a shared directory: another process's backlog would replay here
                logger.warning(
                    "sink %s: no spool directory (no `spool:`, no state_dir): overflow is dropped", spec.name
                )
        self.quarantine_path: str | None = spec.quarantine or (
            os.path.join(state_dir, "quarantine", spool_dir_name(spec.name) + ".ndjson")
            if state_dir
            else None
        )
        self._queue: collections.deque[bytes] = collections.deque()
        self._high_water = max(spec.queue // 2, 1)
        self._order = threading.Lock()  # writer vs pump: who takes the queue's head
        self._wakeup = threading.Event()
        self._pump_wakeup = threading.Event()
        self._stopping = threading.Event()
        self._reopen = threading.Event()
        self._hand: list[bytes] = []  # the batch the writer holds
        self._hand_spooled = 0  # how many of them were read from the spool (uncommitted)
        self._markers: set[bytes] = set()
        self._reported_drops = 0
        self._drops_since: float | None = None
        self._reported_quarantine = 0
        self._outage_submitted = 0
        self._spool_warned = False
        self._permanent = False  # the last failure was not retryable: spilling would not help
        self._write_since: float | None = None  # monotonic start of the write in progress
        self._threads: list[threading.Thread] = []

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def depth(self) -> int:
        """Records waiting in memory (queued plus the batch being written)."""
        return len(self._queue) + len(self._hand) - self._hand_spooled

    @property
    def backlog(self) -> int:
        """Records not yet delivered: in memory and in the spool."""
        return self.depth + (self._spool.depth if self._spool else 0)

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
            "spool_path": self._spool.path if self._spool else None,
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
            self._spool is not None
            and (len(queue) >= self._high_water or not self.stats.healthy)
            and not self._pump_wakeup.is_set()
        ):
            self._pump_wakeup.set()

    def reopen(self) -> None:
        """Have the sink's thread reopen its files before its next write."""
        self._reopen.set()
        self._wakeup.set()

    def start(self) -> None:
        """Start the sink's threads (idempotent)."""
        if self._threads:
            return
        targets = [("writer", self._run_writer)]
        if self._spool is not None:
            targets.append(("spool", self._run_pump))
        for role, target in targets:
            thread = threading.Thread(target=target, name=f"proxylog-sink-{role}-{self.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    # -- writer thread ----------------------------------------------------------------------

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
        if self._spool is not None:
            self._adopt()
        next_adopt = time.monotonic() + ADOPT_EVERY_S
        # Idle threads sleep until woken; they only poll for housekeeping they actually have.
        intervals = [getattr(self.sink, "tick_interval", None), ADOPT_EVERY_S if self._spool else None]
        idle_wait = min((i for i in intervals if i), default=None)
        while not self._stopping.is_set():
            if self._reopen.is_set():
                self._do_reopen()
            batch = self._take()
            if batch:
                if not self._deliver():
                    return
                continue
            if self._unreported():
                self._deliver()  # a marker on its own: losses are announced even when idle
                if self._stopping.is_set():
                    return
            self._idle()
            if self._spool is not None and time.monotonic() >= next_adopt:
                next_adopt = time.monotonic() + ADOPT_EVERY_S
                self._adopt()
            if self._wakeup.wait(idle_wait):
                self._wakeup.clear()
                if 0 < len(self._queue) < self.spec.batch and not self._stopping.is_set():
                    time.sleep(self._linger)

    def _adopt(self) -> None:
        """Pick up records another worker left on disk (a restart, or a reload's old worker)."""
        assert self._spool is not None
        with self._order:
            if not self._spool.held and self._spool.existing():
                self._acquire_spool()
            elif self._spool.held and self._spool.adopt_orphan():
                self._sync_spool_stats()

    def _take(self) -> list[bytes]:
        """The next batch into the writer's hand: from the spool while it holds records
        (they are older), else from memory."""
        with self._order:
            if self._hand:  # left by an interrupted delivery
                return self._hand
            spool = self._spool
            if spool is not None and spool.depth:
                self._hand = spool.read(self.spec.batch)
                self._hand_spooled = len(self._hand)
                if spool.lost:
                    self.stats.failed_drops += spool.lost
                    spool.lost = 0
                self._sync_spool_stats()
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

    def _unreported(self) -> bool:
        return (
            self.stats.dropped != self._reported_drops or self.stats.quarantined != self._reported_quarantine
        )

    def _marker_lines(self) -> list[bytes]:
        """Markers owed to this sink's stream: losses, quarantines, and the end of an outage."""
        lines = []
        now = self._clock()
        dropped = self.stats.dropped - self._reported_drops
        if dropped:
            if self._drops_since is None:
                self._drops_since = now
            lines.append(
                self._marker(
                    "records_dropped",
                    now,
                    dropped={
                        "count": dropped,
                        "total": self.stats.dropped,
                        "since": self._drops_since,
                        "queue_full": self.stats.queue_drops,
                        "failed": self.stats.failed_drops,
                    },
                )
            )
        quarantined = self.stats.quarantined - self._reported_quarantine
        if quarantined:
            lines.append(
                self._marker(
                    "records_quarantined",
                    now,
                    quarantined={
                        "count": quarantined,
                        "total": self.stats.quarantined,
                        "file": self.quarantine_path,
                    },
                )
            )
        if self.stats.outage_since is not None:
            lines.append(
                self._marker(
                    "sink_recovered",
                    now,
                    outage={
                        "since": self.stats.outage_since,
                        "seconds": round(now - self.stats.outage_since, 3),
                        "error": self.stats.last_error,
                        "records_arrived": self.stats.submitted - self._outage_submitted,
                    },
                )
            )
        return lines

    def _marker(self, action: str, now: float, **fields: Any) -> bytes:
        line = encode_document(event_document(action, "process", now, sink=self.name, **fields))
        self._markers.add(line)
        return line

    def _deliver(self) -> bool:
        """Write the hand until it is delivered, refused for good, or the worker stops
        (then the hand stays for `close` to spool); False when stopping."""
        delay = self._retry_initial
        records = len(self._hand)
        pending = list(self._hand)
        while True:
            if self._reopen.is_set():
                self._do_reopen()
            drops_before = self.stats.dropped
            quarantine_before = self.stats.quarantined
            had_outage = self.stats.outage_since is not None
            markers = self._marker_lines()
            self._write_since = time.monotonic()
            try:
                self.sink.write([*markers, *pending])
            except PartialFailure as e:
                self._markers_done(drops_before, quarantine_before, had_outage)
                pending = e.remaining
                self._note_failure(e)
            except PoisonBatch as e:
                self._markers_done(drops_before, quarantine_before, had_outage)
                rejected = [(line, reason) for line, reason in e.rejected if line not in self._markers]
                self._write_since = None
                self._quarantine(rejected)
                self.stats.last_error = str(e)
                self.stats.last_error_at = self._clock()
                self._finish(records - len(rejected))
                return True
            except SinkError as e:
                self._markers.difference_update(markers)
                self._note_failure(e)
                if not e.retryable:
                    self._permanent = True
                    return self._give_up(pending, records)
            except Exception as e:  # a sink bug must not kill the thread or lose the count
                logger.exception("sink %s crashed writing a batch", self.name)
                self._markers.difference_update(markers)
                self._note_failure(SinkError(f"{type(e).__name__}: {e}", retryable=False))
                return self._give_up(pending, records)
            else:
                self._write_since = None
                self._markers_done(drops_before, quarantine_before, had_outage)
                self._finish(records)
                if not self.stats.healthy:
                    logger.warning("sink %s recovered", self.name)
                self.stats.healthy = True
                self._permanent = False
                return True
            self._write_since = None
            self.stats.retries += 1
            if self._spool is not None:
                self._pump_wakeup.set()  # failing: move the queue to disk meanwhile
            if not self._hand_spooled:
                self._hand = pending
            if self._stopping.wait(delay * random.uniform(0.5, 1.0)):
                return False
            delay = min(delay * 2, self._retry_max)

    def _give_up(self, pending: list[bytes], records: int) -> bool:
        self._write_since = None
        lost = sum(1 for line in pending if line not in self._markers)
        self.stats.failed_drops += lost
        self._finish(records - lost)
        return True

    def _markers_done(self, drops: int, quarantined: int, had_outage: bool) -> None:
        """The markers of the last attempt reached the sink (or are still in its pending lines)."""
        self._reported_drops = drops
        self._reported_quarantine = quarantined
        if drops == self.stats.dropped:
            self._drops_since = None
        if had_outage:
            self.stats.outage_since = None

    def _finish(self, delivered: int) -> None:
        """The hand is done with: count what arrived and forget spooled lines."""
        self.stats.written += delivered
        self._markers.clear()
        with self._order:
            if self._hand_spooled and self._spool is not None:
                self._spool.commit(self._hand_spooled)
                self._sync_spool_stats()
            self._hand = []
            self._hand_spooled = 0

    def _quarantine(self, rejected: list[tuple[bytes, str]]) -> None:
        if not rejected:
            return
        now = self._clock()
        data = b"".join(
            b'{"quarantine":%s,"record":%s}\n'
            % (
                encode_document({"at": now, "sink": self.name, "reason": reason}).rstrip(b"\n"),
                line.rstrip(b"\n"),
            )
            for line, reason in rejected
        )
        try:
            if self.quarantine_path is None:
                raise OSError("no quarantine file (no `quarantine:` and no state_dir)")
            append_private(self.quarantine_path, data)
        except OSError as e:
            logger.error(
                "sink %s: cannot quarantine %d records in %s: %s",
                self.name,
                len(rejected),
                self.quarantine_path,
                e.strerror or e,
            )
            self.stats.failed_drops += len(rejected)
            return
        logger.error(
            "sink %s: %d records refused (%s), quarantined in %s",
            self.name,
            len(rejected),
            rejected[0][1],
            self.quarantine_path,
        )
        self.stats.quarantined += len(rejected)

    def _note_failure(self, error: SinkError) -> None:
        self.stats.failures += 1
        now = self._clock()
        if self.stats.healthy or self.stats.last_error != str(error):
            logger.error("sink %s: %s", self.name, error)
        if self.stats.outage_since is None and not isinstance(error, PoisonBatch):
            self.stats.outage_since = now
            self._outage_submitted = self.stats.submitted
        self.stats.healthy = False
        self.stats.last_error = str(error)
        self.stats.last_error_at = now

    # -- pump thread (overflow: spool) ------------------------------------------------------

    def _run_pump(self) -> None:
        self._guarded(self._pump_loop)

    def _pump_loop(self) -> None:
        wait: float | None = None
        while not self._stopping.is_set():
            if self._pump_wakeup.wait(wait):
                self._pump_wakeup.clear()
            wait = None
            while self._should_spill() and not self._stopping.is_set():
                if not self._spill():
                    wait = PUMP_RETRY_S  # spool full or unusable: look again soon
                    break

    def _should_spill(self) -> bool:
        queued = len(self._queue)
        return queued >= self._high_water or (queued > 0 and not self.stats.healthy and not self._permanent)

    def _spill(self) -> int:
        """Move the queue's oldest records to the spool; returns how many moved."""
        assert self._spool is not None
        with self._order:
            if not self._acquire_spool():
                return 0
            count = min(len(self._queue), self.spec.batch)
            lines = [self._queue.popleft() for _ in range(count)]
            moved = self._spool.append(lines)
            if moved < count:
                self._queue.extendleft(reversed(lines[moved:]))
            self.stats.spooled += moved
            self._sync_spool_stats()
            return moved

    def _acquire_spool(self) -> bool:
        assert self._spool is not None
        try:
            held = self._spool.acquire()
        except OSError as e:
            held = False
            logger.error("sink %s: spool %s unusable: %s", self.name, self._spool.base, e.strerror or e)
        if not held and not self._spool_warned:
            self._spool_warned = True
            logger.error(
                "sink %s: no spool directory under %s: overflow is dropped", self.name, self._spool.base
            )
        self._sync_spool_stats()
        return held

    def _sync_spool_stats(self) -> None:
        if self._spool is not None:
            self.stats.spool_depth = self._spool.depth
            self.stats.spool_bytes = self._spool.bytes

    # -- the event loop's side --------------------------------------------------------------

    async def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is delivered; False if `timeout` ran out."""
        return await self._flush(timeout, settle_on_disk=False)

    async def _flush(self, timeout: float, *, settle_on_disk: bool) -> bool:
        self.start()
        deadline = time.monotonic() + timeout
        while self.backlog or (self._unreported() and self.stats.healthy):
            if time.monotonic() >= deadline:
                return False
            if settle_on_disk and self._spool is not None and self._stalled():
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
        if self.stats.dropped != self._reported_drops:
            logger.error(
                "sink %s: %d records were dropped in all (no marker could be written for %d)",
                self.name,
                self.stats.dropped,
                self.stats.dropped - self._reported_drops,
            )
        if not stuck:
            try:
                await asyncio.wait_for(asyncio.to_thread(self.sink.close), max(timeout, 0.1))
            except (TimeoutError, SinkError, OSError) as e:
                logger.error("sink %s: close failed: %s", self.name, e or type(e).__name__)
        return lost

    def _persist_leftovers(self, timeout: float) -> None:
        """Spool what memory still holds (the writer's hand first, it is older); with no spool,
        or when the spool refuses, count it as dropped."""
        hand = [] if self._hand_spooled else [line for line in self._hand if line not in self._markers]
        queued = list(self._queue)
        self._queue.clear()
        self._hand = []
        spool = self._spool
        if spool is None or not self._order.acquire(timeout=timeout):
            self.stats.failed_drops += len(hand) + len(queued)
            return
        try:
            if (hand or queued or self._unreported()) and not self._acquire_spool():
                self.stats.failed_drops += len(hand) + len(queued)
                return
            if hand and not spool.prepend(hand):
                self.stats.failed_drops += len(hand)
                hand = []
            moved = spool.append(queued) if queued else 0
            self.stats.spooled += moved + len(hand)
            self.stats.failed_drops += len(queued) - moved
            if spool.held and self._unreported():
                markers = self._marker_lines()
                if spool.append(markers) == len(markers):
                    self._reported_drops = self.stats.dropped
                    self._reported_quarantine = self.stats.quarantined
            if spool.depth:
                logger.warning(
                    "sink %s: %d records kept in %s for the next run", self.name, spool.depth, spool.path
                )
            self._sync_spool_stats()
            spool.close()
        finally:
            self._order.release()
