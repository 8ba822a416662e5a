"""The sink contract and the worker that delivers to a sink, in one place for importers.

A sink implements `Sink` (and optionally `Reopenable`, `Ticking`) and raises `SinkError`,
`PartialFailure` or `PoisonBatch`; a `SinkWorker` owns it and counts in `SinkStats`. The
implementations live in private modules: `_types`, `_worker` (queue, threads, retry),
`_overflow` (the spool side) and `_losses` (loss markers and quarantine).
"""

from __future__ import annotations

from proxylog.sinks._types import PartialFailure, PoisonBatch, Reopenable, Sink, SinkStats, Ticking
from proxylog.sinks._worker import SinkWorker

__all__ = ["PartialFailure", "PoisonBatch", "Reopenable", "Sink", "SinkStats", "SinkWorker", "Ticking"]
