"""The live runtime built from a Config: sinks, client identity, mode; shared by every hook."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from proxylog.bodies import build_body_parser
from proxylog.config import Config
from proxylog.config.sinks import SinkSpec
from proxylog.identity import TrustedProxies
from proxylog.record import AccessRecord, encode_document, encode_record
from proxylog.redact import Redactor
from proxylog.rules import RuleEngine
from proxylog.sinks import Sink, SinkWorker, build_sink

logger = logging.getLogger("proxylog")


class Runtime:
    """Everything a request needs, compiled once per config. `emit` is the only way a record
    leaves the process; it is synchronous, never blocks and never raises."""

    def __init__(self, config: Config, sinks: Sequence[Sink] | None = None) -> None:
        """`sinks` replaces the configured sinks (tests pass a MemorySink)."""
        self.config = config
        self.mode = config.mode
        self.trusted = TrustedProxies(config.trusted_proxies)
        self.redactor = Redactor(config.redact)
        self.body_parser = build_body_parser(config.redact)
        self.engine = RuleEngine(config.rules)
        if sinks is None:
            self.workers = [SinkWorker(build_sink(spec), spec) for spec in config.sinks]
        else:
            self.workers = [SinkWorker(s, SinkSpec(type="custom", name=s.name)) for s in sinks]
        self.emitted = 0

    def start(self) -> None:
        """Start the sink workers on the running loop."""
        for worker in self.workers:
            worker.start()

    def emit(self, record: AccessRecord) -> None:
        """Redact a record, encode it once and queue it on every sink."""
        self.emitted += 1
        self._submit(encode_record(self.redactor(record), self.config.record.schema))

    def emit_document(self, doc: dict[str, Any]) -> None:
        """Queue a non-access event (marker, audit, alert) on every sink."""
        self._submit(encode_document(doc, self.config.record.schema))

    def _submit(self, line: bytes) -> None:
        for worker in self.workers:
            worker.submit(line)

    def reopen(self) -> None:
        """Ask every sink to reopen its files (SIGHUP, after an external logrotate)."""
        for worker in self.workers:
            worker.reopen()

    async def flush(self, timeout: float) -> bool:
        results = await asyncio.gather(*(w.flush(timeout) for w in self.workers))
        return all(results)

    async def close(self, timeout: float = 10.0) -> int:
        """Flush every sink for up to `timeout` seconds and close them; returns records lost."""
        lost = await asyncio.gather(*(w.close(timeout) for w in self.workers))
        return sum(lost)
