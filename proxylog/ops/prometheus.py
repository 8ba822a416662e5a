"""The Prometheus exposition: read from the live runtime when Prometheus scrapes, so metrics
cost nothing between scrapes. Labels carry only config-defined names (rule ids, sink names),
never request data."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest

from proxylog.diagnostics import dropped_log_lines
from proxylog.metrics import UPSTREAM_BUCKETS

if TYPE_CHECKING:
    from proxylog.runtime import Runtime


class RuntimeCollector:
    """A prometheus-client collector reading the runtime at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        metrics = runtime.metrics

        requests = CounterMetricFamily(
            "proxylog_requests",
            "Requests by response status class and action.",
            labels=["status_class", "action"],
        )
        for (klass, action), count in sorted(metrics.requests.items()):
            requests.add_metric([klass, action], count)
        yield requests

        cumulative, total = [], 0
        for bound, count in zip((*UPSTREAM_BUCKETS, float("inf")), metrics.buckets, strict=True):
            total += count
            cumulative.append((str(bound) if bound != float("inf") else "+Inf", total))
        yield HistogramMetricFamily(
            "proxylog_upstream_latency_seconds",
            "Puma's time to first response byte.",
            buckets=cumulative,
            sum_value=metrics.upstream_sum,
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
    for worker in runtime.workers:
        stats = worker.stats
        depth.add_metric([worker.name], worker.depth)
        written.add_metric([worker.name], stats.written)
        dropped.add_metric([worker.name], stats.dropped)
        retries.add_metric([worker.name], stats.retries)
        spooled.add_metric([worker.name], stats.spooled)
        spool_depth.add_metric([worker.name], stats.spool_depth)
        quarantined.add_metric([worker.name], stats.quarantined)
        healthy.add_metric([worker.name], 1.0 if stats.healthy else 0.0)
    yield from (depth, written, dropped, retries, spooled, spool_depth, quarantined, healthy)


def build_registry(runtime: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition format for a scrape."""
    return generate_latest(registry)
