"""The worker's disk side with ``overflow: spool``: where a sink spools, moving the queue's
oldest records to disk, reading them back in order, and keeping what is left at shutdown.

Every method runs on one of the worker's threads and blocks on disk I/O. The worker's order
lock decides who takes the queue's head: methods documented as taking it do so themselves,
the others expect the caller to hold it.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable

from proxylog.config.sinks import SinkSpec
from proxylog.sinks.base import SinkStats
from proxylog.sinks.losses import LossLedger
from proxylog.sinks.spool import Spool, spool_dir_name

logger = logging.getLogger("proxylog.sinks")

PUMP_RETRY_S = 0.5


def spool_for(spec: SinkSpec, state_dir: str | None) -> Spool | None:
    """The spool a spec overflows to (its `spool:`, else ``<state_dir>/spool/<name>``); None
    with ``overflow: drop`` or without a directory to use."""
    if spec.overflow != "spool":
        return None
    if spec.spool or state_dir:
        base = spec.spool or os.path.join(state_dir or "", "spool", spool_dir_name(spec.name))
        return Spool(base, spec.spool_max)
    if spec.type != "custom":  # never guess a shared directory: another process's backlog would replay here
        logger.warning(
            "sink %s: no spool directory (no `spool:`, no state_dir): overflow is dropped", spec.name
        )
    return None


class Overflow:
    """Moves records between a worker's `queue` and `spool` in batches of `batch`, keeping
    `stats` (spooled, spool depth and size, records lost on disk) up to date."""

    def __init__(
        self,
        name: str,
        spool: Spool,
        queue: collections.deque[bytes],
        order: threading.Lock,
        stats: SinkStats,
        batch: int,
    ) -> None:
        self.name = name
        self.spool = spool
        self.stats = stats
        self._queue = queue
        self._order = order
        self._batch = batch
        self._warned = False

    def adopt(self) -> None:
        """Pick up records another worker left on disk (a restart, or a reload's old worker);
        takes the order lock."""
        with self._order:
            if not self.spool.held and self.spool.existing():
                self.acquire()
            elif self.spool.held and self.spool.adopt_orphan():
                self.sync_stats()

    def pump(self, wakeup: threading.Event, stopping: threading.Event, due: Callable[[], bool]) -> None:
        """The pump thread's loop: each time `wakeup` is set, spill while `due()` says so;
        returns once `stopping` is set."""
        wait: float | None = None
        while not stopping.is_set():
            if wakeup.wait(wait):
                wakeup.clear()
            wait = None
            while due() and not stopping.is_set():
                if not self.spill():
                    wait = PUMP_RETRY_S  # spool full or unusable: look again soon
                    break

    def spill(self) -> int:
        """Move the queue's oldest records to the spool; returns how many moved. Takes the
        order lock."""
        with self._order:
            if not self.acquire():
                return 0
            count = min(len(self._queue), self._batch)
            lines = [self._queue.popleft() for _ in range(count)]
            moved = self.spool.append(lines)
            if moved < count:
                self._queue.extendleft(reversed(lines[moved:]))
            self.stats.spooled += moved
            self.sync_stats()
            return moved

    def read(self, limit: int) -> list[bytes]:
        """Up to `limit` of the oldest spooled records, kept on disk until `commit`; records
        in unreadable segments count as dropped."""
        lines = self.spool.read(limit)
        if self.spool.lost:
            self.stats.failed_drops += self.spool.lost
            self.spool.lost = 0
        self.sync_stats()
        return lines

    def commit(self, count: int) -> None:
        """Forget the first `count` records of the last `read`: the sink has them."""
        self.spool.commit(count)
        self.sync_stats()

    def acquire(self) -> bool:
        """Hold the spool directory; False (logged once) when none can be had."""
        try:
            held = self.spool.acquire()
        except OSError as e:
            held = False
            logger.error("sink %s: spool %s unusable: %s", self.name, self.spool.base, e.strerror or e)
        if not held and not self._warned:
            self._warned = True
            logger.error(
                "sink %s: no spool directory under %s: overflow is dropped", self.name, self.spool.base
            )
        self.sync_stats()
        return held

    def sync_stats(self) -> None:
        self.stats.spool_depth = self.spool.depth
        self.stats.spool_bytes = self.spool.bytes

    def keep(self, hand: list[bytes], queued: list[bytes], ledger: LossLedger, timeout: float) -> bool:
        """At shutdown, spool the writer's `hand` ahead of everything (it is older), then
        `queued` and the markers still owed, and release the directory. Records the spool
        refuses count as dropped; False, with nothing kept, when the order lock is not had
        within `timeout` or no spool directory can be held."""
        if not self._order.acquire(timeout=timeout):
            return False
        try:
            if (hand or queued or ledger.unreported()) and not self.acquire():
                return False
            spool = self.spool
            if hand and not spool.prepend(hand):
                self.stats.failed_drops += len(hand)
                hand = []
            moved = spool.append(queued) if queued else 0
            self.stats.spooled += moved + len(hand)
            self.stats.failed_drops += len(queued) - moved
            if spool.held and ledger.unreported():
                markers, receipt = ledger.owed()
                if spool.append(markers, force=True) == len(markers):
                    ledger.spooled(receipt)
            if spool.depth:
                logger.warning(
                    "sink %s: %d records kept in %s for the next run", self.name, spool.depth, spool.path
                )
            self.sync_stats()
            spool.close()
        finally:
            self._order.release()
        return True
