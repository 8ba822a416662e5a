"""Small fakes for tests, shipped so users can test their own configs and extensions."""

from __future__ import annotations

import time
from typing import Any

import orjson

from proxylog.errors import SinkError
from proxylog.record import AccessRecord


class FakeClock:
    """A clock tests advance by hand: ``clock = FakeClock(); clock.advance(60)``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class MemorySink:
    """Keeps every delivered line in memory; set `fail_with` to make writes raise SinkError."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.lines: list[bytes] = []
        self.fail_with: SinkError | None = None
        self.closed = False

    def write(self, lines: list[bytes]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.lines.extend(lines)

    def close(self) -> None:
        self.closed = True

    def documents(self) -> list[dict[str, Any]]:
        """The delivered lines, decoded."""
        return [orjson.loads(line) for line in self.lines]


def make_record(**fields: Any) -> AccessRecord:
    """An AccessRecord for a plain GET / from 203.0.113.7, with `fields` overriding."""
    defaults: dict[str, Any] = {
        "timestamp": time.time(),
        "request_id": "01TESTREQUEST0000000000000",
        "method": "GET",
        "scheme": "http",
        "domain": "app.example.com",
        "path": "/",
        "query": None,
        "http_version": "1.1",
        "client_ip": "203.0.113.7",
        "source_ip": "203.0.113.7",
        "source_port": 51544,
        "user_agent": "Mozilla/5.0",
        "status": 200,
    }
    return AccessRecord(**{**defaults, **fields})
