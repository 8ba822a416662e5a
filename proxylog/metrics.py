"""Request metrics: the plain counters the request path bumps (a dict increment and a bisect).
Prometheus reads them, with everything else, from the live runtime when it scrapes
(`proxylog.ops.prometheus`), so metrics cost nothing between scrapes."""

from __future__ import annotations

import bisect

UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STATUS_CLASS = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


class RequestMetrics:
    """Counters updated once per request: by status class and action, bytes in and out, and
    the upstream-latency and total-duration histograms (dict increments and two bisects)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.buckets = [0] * (len(UPSTREAM_BUCKETS) + 1)
        self.upstream_sum = 0.0
        self.upstream_count = 0
        self.duration_buckets = [0] * (len(UPSTREAM_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.reloads = {"ok": 0, "failed": 0}
        self.header_timeouts = 0
        self.unreadable_connections = 0  # ended with no request read (no record)
        self.bans = {"created": 0, "expired": 0, "lifted": 0}

    def observe(
        self,
        status: int | None,
        action: str,
        upstream_ms: float | None,
        duration_ns: int = 0,
        bytes_in: int = 0,
        bytes_out: int = 0,
    ) -> None:
        klass = _STATUS_CLASS[status // 100] if status is not None and 100 <= status < 600 else "none"
        key = (klass, action)
        self.requests[key] = self.requests.get(key, 0) + 1
        duration = duration_ns / 1e9
        self.duration_buckets[bisect.bisect_left(UPSTREAM_BUCKETS, duration)] += 1
        self.duration_sum += duration
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        if upstream_ms is not None:
            seconds = upstream_ms / 1000
            self.buckets[bisect.bisect_left(UPSTREAM_BUCKETS, seconds)] += 1
            self.upstream_sum += seconds
            self.upstream_count += 1
