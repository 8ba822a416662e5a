"""Sinks: where encoded records go. `build_sink` maps a spec to its sink via a registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxylog.config.sinks import FileSpec, HttpSpec, SinkSpec, StdoutSpec, SyslogSpec
from proxylog.sinks.base import PartialFailure, PoisonBatch, Sink, SinkStats
from proxylog.sinks.file import FileSink
from proxylog.sinks.http import HttpSink
from proxylog.sinks.stdout import StdoutSink
from proxylog.sinks.syslog import SyslogSink
from proxylog.sinks.worker import SinkWorker

__all__ = ["SINKS", "PartialFailure", "PoisonBatch", "Sink", "SinkStats", "SinkWorker", "build_sink"]

SINKS: dict[type[SinkSpec], Callable[[Any], Sink]] = {
    StdoutSpec: StdoutSink.from_spec,
    FileSpec: FileSink.from_spec,
    SyslogSpec: SyslogSink.from_spec,
    HttpSpec: HttpSink.from_spec,
}


def build_sink(spec: SinkSpec) -> Sink:
    """The sink for a spec; every spec type parsed by config has an entry here. Raises
    ConfigError when a file the sink needs (key, token, CA) cannot be read."""
    return SINKS[type(spec)](spec)
