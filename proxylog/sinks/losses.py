"""Loss accounting for one sink's stream: the markers that announce records dropped or
quarantined and the end of an outage, and the quarantine file for records a receiver refused.

Markers travel to the sink ahead of the next batch (or alone when it is idle) but are never
records: the ledger remembers the marker lines in flight so the worker can tell them apart,
and each set of markers comes with a `Receipt` of exactly the totals it announced.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from proxylog.config.sinks import SinkSpec
from proxylog.record import Schema, encode_document, event_document
from proxylog.sinks.base import SinkStats
from proxylog.sinks.fsio import append_private
from proxylog.sinks.spool import spool_dir_name

logger = logging.getLogger("proxylog.sinks")


def quarantine_path_for(spec: SinkSpec, state_dir: str | None) -> str | None:
    """The spec's quarantine file, else ``<state_dir>/quarantine/<name>.ndjson``; None without
    either (refused records are then counted as dropped)."""
    if spec.quarantine:
        return spec.quarantine
    if state_dir:
        return os.path.join(state_dir, "quarantine", spool_dir_name(spec.name) + ".ndjson")
    return None


@dataclass(frozen=True, slots=True)
class Receipt:
    """The totals a set of markers announced, and whether they closed an outage; `lines`
    names what each marker line announces ("drops", "quarantined" or "outage")."""

    drops: int
    quarantined: int
    outage: bool
    lines: tuple[tuple[bytes, str], ...] = ()


class LossLedger:
    """What one sink's stream is owed. Used from the worker's threads; in `stats` it counts
    quarantined records (or, without a quarantine file, dropped ones) and opens and closes
    outages, but never counts records as written."""

    def __init__(
        self,
        name: str,
        stats: SinkStats,
        clock: Callable[[], float],
        quarantine_path: str | None,
        schema: Schema = "nested",
    ) -> None:
        self.name = name
        self.schema: Schema = schema
        self.stats = stats
        self.quarantine_path = quarantine_path
        self._clock = clock
        self._in_flight: set[bytes] = set()  # marker lines handed to the sink with the hand
        self._reported_drops = 0
        self._reported_quarantine = 0
        self._drops_since: float | None = None
        self._outage_submitted = 0

    def unreported(self) -> bool:
        """Whether drops or quarantines happened that no marker has announced yet."""
        stats = self.stats
        return stats.dropped != self._reported_drops or stats.quarantined != self._reported_quarantine

    def is_marker(self, line: bytes) -> bool:
        """Whether `line` is a marker of the batch in flight (not a record)."""
        return line in self._in_flight

    def owed(self) -> tuple[list[bytes], Receipt]:
        """Markers owed to the stream (losses, quarantines, the end of an outage) and the
        receipt to `settle` once they reach the sink."""
        stats = self.stats
        now = self._clock()
        # One read of each counter: the event loop keeps counting queue drops meanwhile, and
        # the receipt must match what the markers say.
        queue_full, failed, quarantined = stats.queue_drops, stats.failed_drops, stats.quarantined
        outage_since = stats.outage_since
        total = queue_full + failed
        lines: list[tuple[bytes, str]] = []
        dropped = total - self._reported_drops
        if dropped:
            if self._drops_since is None:
                self._drops_since = now
            dropped_fields = {
                "count": dropped,
                "total": total,
                "since": self._drops_since,
                "queue_full": queue_full,
                "failed": failed,
            }
            lines.append((self._marker("records_dropped", now, dropped=dropped_fields), "drops"))
        if quarantined != self._reported_quarantine:
            quarantined_fields = {
                "count": quarantined - self._reported_quarantine,
                "total": quarantined,
                "file": self.quarantine_path,
            }
            marker = self._marker("records_quarantined", now, quarantined=quarantined_fields)
            lines.append((marker, "quarantined"))
        if outage_since is not None:
            outage_fields = {
                "since": outage_since,
                "seconds": round(now - outage_since, 3),
                "error": stats.last_error,
                "records_arrived": stats.submitted - self._outage_submitted,
            }
            lines.append((self._marker("sink_recovered", now, outage=outage_fields), "outage"))
        receipt = Receipt(total, quarantined, outage_since is not None, tuple(lines))
        return [line for line, _ in lines], receipt

    def _marker(self, action: str, now: float, **fields: Any) -> bytes:
        line = encode_document(event_document(action, "process", now, sink=self.name, **fields), self.schema)
        self._in_flight.add(line)
        return line

    def settle(self, receipt: Receipt, unsent: Collection[bytes] = ()) -> None:
        """The markers of `receipt` reached the sink, except those in `unsent` (a partial
        write): what those announce stays owed, and their lines are forgotten, so the next
        attempt announces it afresh, once."""
        owed = {kind for line, kind in receipt.lines if line in unsent}
        if "drops" not in owed:
            self._reported_drops = receipt.drops
            if receipt.drops == self.stats.dropped:
                self._drops_since = None
        if "quarantined" not in owed:
            self._reported_quarantine = receipt.quarantined
        if receipt.outage and "outage" not in owed:
            self.stats.outage_since = None
        self._in_flight.difference_update(unsent)

    def spooled(self, receipt: Receipt) -> None:
        """The markers of `receipt` wait in the spool for the next run: the losses count as
        announced, but the outage is not over."""
        self._reported_drops = receipt.drops
        self._reported_quarantine = receipt.quarantined

    def retract(self, markers: list[bytes]) -> None:
        """The write carrying `markers` failed: they announced nothing."""
        self._in_flight.difference_update(markers)

    def clear(self) -> None:
        """The batch is done with: no marker is in flight any more."""
        self._in_flight.clear()

    def outage_began(self, now: float) -> None:
        """Open an outage at `now`; its end is announced by a ``sink_recovered`` marker."""
        self.stats.outage_since = now
        self._outage_submitted = self.stats.submitted

    def quarantine(self, rejected: list[tuple[bytes, str]]) -> None:
        """Append refused lines with their reasons to the quarantine file (blocking); when it
        cannot be written they count as dropped."""
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

    def log_unannounced(self) -> None:
        """At shutdown, log drops that no marker announced (the stream will never say so)."""
        dropped = self.stats.dropped
        if dropped != self._reported_drops:
            logger.error(
                "sink %s: %d records were dropped in all (no marker could be written for %d)",
                self.name,
                dropped,
                dropped - self._reported_drops,
            )
