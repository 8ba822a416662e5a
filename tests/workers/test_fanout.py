"""How the supervisor combines its workers' answers: stats summed, bans united, metrics merged."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from proxylog.workers.fanout import merged_exposition, summed, union_bans

WORKER_0 = """\
# HELP proxylog_requests_total Requests by response status class and action.
# TYPE proxylog_requests_total counter
proxylog_requests_total{action="allowed",status_class="2xx"} 7.0
proxylog_requests_total{action="blocked",status_class="4xx"} 1.0
# HELP proxylog_upstream_seconds Upstream latency.
# TYPE proxylog_upstream_seconds histogram
proxylog_upstream_seconds_bucket{le="0.1"} 5.0
proxylog_upstream_seconds_bucket{le="+Inf"} 7.0
proxylog_upstream_seconds_count 7.0
proxylog_upstream_seconds_sum 0.5
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1000.0
# HELP process_max_fds Maximum number of open file descriptors.
# TYPE process_max_fds gauge
process_max_fds 1024.0
"""

WORKER_1 = """\
# HELP proxylog_requests_total Requests by response status class and action.
# TYPE proxylog_requests_total counter
proxylog_requests_total{action="allowed",status_class="2xx"} 3.0
# HELP proxylog_upstream_seconds Upstream latency.
# TYPE proxylog_upstream_seconds histogram
proxylog_upstream_seconds_bucket{le="0.1"} 1.0
proxylog_upstream_seconds_bucket{le="+Inf"} 3.0
proxylog_upstream_seconds_count 3.0
proxylog_upstream_seconds_sum 0.25
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 990.0
# HELP process_max_fds Maximum number of open file descriptors.
# TYPE process_max_fds gauge
process_max_fds 1024.0
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_and_histograms_add_up_and_process_limits_do_not() -> None:
    merged = samples(merged_exposition([WORKER_0, WORKER_1]).decode())
    allowed = (("action", "allowed"), ("status_class", "2xx"))
    assert merged[("proxylog_requests_total", allowed)] == 10
    assert merged[("proxylog_requests_total", (("action", "blocked"), ("status_class", "4xx")))] == 1
    assert merged[("proxylog_upstream_seconds_bucket", (("le", "0.1"),))] == 6
    assert merged[("proxylog_upstream_seconds_count", ())] == 10
    assert merged[("proxylog_upstream_seconds_sum", ())] == 0.75
    assert merged[("process_start_time_seconds", ())] == 990  # the earliest start
    assert merged[("process_max_fds", ())] == 1024  # a limit, not a sum


def test_stats_sum_numbers_key_by_key() -> None:
    a = {"requests": {"2xx/allowed": 3}, "sinks": {"file": {"written": 3, "healthy": True}}, "reloads": {}}
    b = {"requests": {"2xx/allowed": 4, "4xx/blocked": 1}, "sinks": {"file": {"written": 5, "healthy": True}}}
    assert summed([a, b]) == {
        "requests": {"2xx/allowed": 7, "4xx/blocked": 1},
        "sinks": {"file": {"written": 8, "healthy": True}},
        "reloads": {},
    }


def test_a_key_banned_on_several_workers_is_one_ban_with_the_latest_end() -> None:
    bans = union_bans(
        [
            [{"key": "203.0.113.7", "until": 100.0}, {"key": "198.51.100.1", "until": 50.0}],
            [{"key": "203.0.113.7", "until": 120.0}],
        ]
    )
    assert [(b["key"], b["until"]) for b in bans] == [("198.51.100.1", 50.0), ("203.0.113.7", 120.0)]
