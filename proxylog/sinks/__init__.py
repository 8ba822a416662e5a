"""Sinks: where encoded records go. `build_sink` maps a spec to its sink via a registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxylog.config.sinks import FileSpec, SinkSpec, StdoutSpec
from proxylog.sinks.base import Sink, SinkStats, SinkWorker
from proxylog.sinks.file import FileSink
from proxylog.sinks.stdout import StdoutSink

__all__ = ["SINKS", "Sink", "SinkStats", "SinkWorker", "build_sink"]

SINKS: dict[type[SinkSpec], Callable[[Any], Sink]] = {
    StdoutSpec: StdoutSink.from_spec,
    FileSpec: FileSink.from_spec,
}


def build_sink(spec: SinkSpec) -> Sink:
    """The sink for a spec; every spec type parsed by config has an entry here."""
    return SINKS[type(spec)](spec)
