"""The Prometheus exposition: read from the live runtime when Prometheus scrapes, so metrics
cost nothing between scrapes. Labels carry only config-defined names (rule ids, sink names),
never request data. The server answers ``GET`` and ``HEAD /metrics``, on loopback unless
`metrics.public`, which requires a bearer token."""

from __future__ import annotations

import asyncio
import hmac
import platform
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

from proxylog import __version__
from proxylog.config.ops import MetricsSpec
from proxylog.config.secrets import read_secret
from proxylog.diagnostics import dropped_log_lines
from proxylog.metrics import UPSTREAM_BUCKETS
from proxylog.ops.httpserver import Request, Response, connection_handler

if TYPE_CHECKING:
    from proxylog.runtime import Runtime


def _histogram(name: str, doc: str, counts: list[int], total: float) -> HistogramMetricFamily:
    cumulative, running = [], 0
    for bound, count in zip((*UPSTREAM_BUCKETS, float("inf")), counts, strict=True):
        running += count
        cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=total)


class RuntimeCollector:
    """A prometheus-client collector reading the runtime at scrape time; `inflight` reads the
    data plane's requests in progress (None: not reported)."""

    def __init__(self, runtime: Runtime, inflight: Callable[[], int] | None = None) -> None:
        self.runtime = runtime
        self.inflight = inflight

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        metrics = runtime.metrics
        info = GaugeMetricFamily(
            "proxylog_build_info",
            "proxylog's version and Python (always 1).",
            labels=["version", "python", "engine"],
        )
        info.add_metric([__version__, platform.python_version(), runtime.config.engine], 1.0)
        yield info
        if self.inflight is not None:
            yield GaugeMetricFamily(
                "proxylog_inflight_requests", "Requests in progress.", value=self.inflight()
            )
        yield _histogram(
            "proxylog_request_duration_seconds",
            "Whole requests, first request byte to last response byte.",
            metrics.duration_buckets,
            metrics.duration_sum,
        )
        yield CounterMetricFamily(
            "proxylog_request_bytes",
            "Bytes received from clients (heads and bodies).",
            value=metrics.bytes_in,
        )
        yield CounterMetricFamily(
            "proxylog_response_bytes", "Bytes sent to clients (heads and bodies).", value=metrics.bytes_out
        )
        bans = CounterMetricFamily(
            "proxylog_bans", "Bans imposed (created) and ended (expired, lifted).", labels=["event"]
        )
        for event, count in metrics.bans.items():
            bans.add_metric([event], count)
        yield bans

        requests = CounterMetricFamily(
            "proxylog_requests",
            "Requests by response status class and action.",
            labels=["status_class", "action"],
        )
        for (klass, action), count in sorted(metrics.requests.items()):
            requests.add_metric([klass, action], count)
        yield requests

        yield _histogram(
            "proxylog_upstream_latency_seconds",
            "Puma's time to first response byte.",
            metrics.buckets,
            metrics.upstream_sum,
        )

        mode = GaugeMetricFamily(
            "proxylog_mode", "The live rule mode (1 for the current one).", labels=["mode"]
        )
        for name in ("monitor", "enforce"):
            mode.add_metric([name], 1.0 if runtime.mode == name else 0.0)
        yield mode

        stats = runtime.engine.stats()
        hits = CounterMetricFamily("proxylog_rule_hits", "Requests each rule matched.", labels=["rule"])
        for rule, counts in sorted(stats.rules.items()):
            hits.add_metric([rule], counts.matched)
        yield hits
        yield GaugeMetricFamily("proxylog_active_bans", "Active bans.", value=len(runtime.engine.bans()))
        yield from _state_metrics(runtime)

        yield from _sink_metrics(runtime)

        reloads = CounterMetricFamily(
            "proxylog_config_reloads", "Config reloads by result.", labels=["result"]
        )
        for result, count in metrics.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        yield CounterMetricFamily(
            "proxylog_header_timeouts",
            "Client connections closed for not sending complete request headers in time.",
            value=metrics.header_timeouts,
        )
        yield CounterMetricFamily(
            "proxylog_connections_unreadable",
            "Client connections that ended before a request could be read from them (no record).",
            value=metrics.unreadable_connections,
        )
        yield CounterMetricFamily(
            "proxylog_log_lines_dropped",
            "proxylog's own stderr log lines dropped because stderr could not keep up.",
            value=dropped_log_lines(),
        )
        yield CounterMetricFamily(
            "proxylog_internal_errors",
            "Exceptions caught inside proxylog's hooks.",
            value=runtime.internal_errors,
        )
        if runtime.alerts is not None:
            yield from _alert_metrics(runtime.alerts.snapshot())


def _alert_metrics(snapshot: dict[str, Any]) -> Iterator[Metric]:
    labels = ["channel", "type", "result"]
    alerts = CounterMetricFamily(
        "proxylog_alerts",
        "Alerts per channel: sent, retried (attempts repeated), dropped (counted, with an "
        "alerts_dropped event), suppressed (a duplicate within the cooldown).",
        labels=labels,
    )
    queued = GaugeMetricFamily("proxylog_alert_queue_depth", "Alerts waiting to be sent.", labels=["channel"])
    for name, channel in snapshot["channels"].items():
        for result in ("sent", "retried", "dropped", "suppressed"):
            alerts.add_metric([name, channel["type"], result], channel[result])
        queued.add_metric([name], channel["queued"])
    yield alerts
    yield queued


def _state_metrics(runtime: Runtime) -> Iterator[Metric]:
    """A shared state backend's health and traffic (nothing for the in-process one)."""
    stats = runtime.store.stats()
    if stats["backend"] == "memory":
        return
    yield GaugeMetricFamily(
        "proxylog_state_degraded",
        "1 while the shared state backend is unreachable (state is local meanwhile).",
        value=1.0 if stats["degraded"] else 0.0,
    )
    yield CounterMetricFamily(
        "proxylog_state_outages", "Times the shared state backend became unreachable.", value=stats["outages"]
    )
    yield CounterMetricFamily(
        "proxylog_state_round_trips",
        "Pipelined round trips to the shared state backend.",
        value=stats["round_trips"],
    )
    yield CounterMetricFamily(
        "proxylog_state_commands", "Commands sent to the shared state backend.", value=stats["commands"]
    )


def _sink_metrics(runtime: Runtime) -> Iterator[Metric]:
    labels = ["sink"]
    depth = GaugeMetricFamily(
        "proxylog_sink_queue_depth", "Records waiting in a sink's queue.", labels=labels
    )
    written = CounterMetricFamily("proxylog_sink_written", "Records a sink delivered.", labels=labels)
    dropped = CounterMetricFamily("proxylog_sink_dropped", "Records a sink lost (counted).", labels=labels)
    retries = CounterMetricFamily("proxylog_sink_retries", "Batch retries.", labels=labels)
    spooled = CounterMetricFamily(
        "proxylog_sink_spooled", "Records written to a sink's disk spool.", labels=labels
    )
    spool_depth = GaugeMetricFamily(
        "proxylog_sink_spool_depth", "Records waiting in a sink's spool.", labels=labels
    )
    quarantined = CounterMetricFamily(
        "proxylog_sink_quarantined", "Records a collector refused, kept in quarantine.", labels=labels
    )
    healthy = GaugeMetricFamily(
        "proxylog_sink_healthy", "1 when the sink's last write succeeded.", labels=labels
    )
    records = CounterMetricFamily(
        "proxylog_sink_records",
        "Records (and events) by what became of them at each sink.",
        labels=["sink", "outcome"],
    )
    for worker in runtime.workers:
        stats = worker.stats
        for outcome, count in (
            ("submitted", stats.submitted),
            ("written", stats.written),
            ("dropped", stats.dropped),
            ("quarantined", stats.quarantined),
            ("spooled", stats.spooled),
        ):
            records.add_metric([worker.name, outcome], count)
        depth.add_metric([worker.name], worker.depth)
        written.add_metric([worker.name], stats.written)
        dropped.add_metric([worker.name], stats.dropped)
        retries.add_metric([worker.name], stats.retries)
        spooled.add_metric([worker.name], stats.spooled)
        spool_depth.add_metric([worker.name], stats.spool_depth)
        quarantined.add_metric([worker.name], stats.quarantined)
        healthy.add_metric([worker.name], 1.0 if stats.healthy else 0.0)
    yield from (depth, written, dropped, retries, spooled, spool_depth, quarantined, healthy, records)


def build_registry(runtime: Runtime, inflight: Callable[[], int] | None = None) -> CollectorRegistry:
    """proxylog's metrics and the standard process_*, python_* collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime, inflight))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition format for a scrape."""
    return generate_latest(registry)


class MetricsEndpoint:
    """Prometheus text exposition on ``GET``/``HEAD /metrics`` at `spec.listen` (none: not
    started), rendered by `render` for each scrape. With a token configured
    (`metrics.public`), a scrape without ``Authorization: Bearer <token>`` gets 401."""

    def __init__(self, spec: MetricsSpec, render: Callable[[], Awaitable[bytes]]) -> None:
        self.spec = spec
        self.render = render
        self.token = (
            read_secret(spec.token_file, spec.token_env, "metrics")
            if (spec.token_file or spec.token_env)
            else None
        )
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        if self.spec.listen is not None:
            serve = connection_handler(self.handle, _tcp_peer)
            self._server = await asyncio.start_server(serve, self.spec.listen[0], self.spec.listen[1])

    @property
    def port(self) -> int | None:
        return self._server.sockets[0].getsockname()[1] if self._server else None

    async def handle(self, request: Request) -> Response:
        if request.path != "/metrics" or request.method not in ("GET", "HEAD"):
            return Response(404, b"only GET /metrics here\n", "text/plain")
        if self.token is not None and not _bearer_ok(request.headers.get("authorization", ""), self.token):
            return Response(401, b"missing or wrong bearer token\n", "text/plain")
        return Response(200, await self.render(), "text/plain; version=0.0.4; charset=utf-8")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


class MetricsServer(MetricsEndpoint):
    """One proxylog process's metrics: its runtime's and the standard collectors."""

    def __init__(self, runtime: Runtime, inflight: Callable[[], int] | None = None) -> None:
        self.runtime = runtime
        self.registry = build_registry(runtime, inflight)
        super().__init__(runtime.config.metrics, self._render)

    async def _render(self) -> bytes:
        return exposition(self.registry)


def _bearer_ok(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _tcp_peer(writer: asyncio.StreamWriter) -> tuple[str, int | None, int | None]:
    peer = writer.get_extra_info("peername")
    return (f"{peer[0]}:{peer[1]}" if peer else "unknown"), None, None
