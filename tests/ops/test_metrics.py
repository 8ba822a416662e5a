"""Metrics for real monitoring: the exposition a live proxylog serves (process and build
info, in flight, durations, bytes, bans, sink outcomes), HEAD, the public opt-in with its
bearer token, and the shipped dashboard and alert rules naming only metrics that exist."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxylog.config import ConfigError, parse_config
from tests._http import request
from tests.conftest import ROOT, free_port
from tests.ops.test_control import ctl, wait_until
from tests.state.conftest import RedisServer, redis_server  # noqa: F401 (the fixture)

MONITORING = ROOT / "deploy" / "monitoring"
NAMES = re.compile(r"\b(?:proxylog|process|python)_[a-z0-9_]+\b")
# Exposed only with a shared state backend (`state: {backend: redis}`): checked against a
# redis-backed proxylog below.
STATE = "proxylog_state_"


@pytest.mark.parametrize(
    ("metrics", "path", "message"),
    [
        ({"listen": "0.0.0.0:9090"}, "metrics.listen", "metrics.public: true"),
        ({"listen": "0.0.0.0:9090", "public": True}, "metrics", "token_file"),
    ],
)
def test_listening_beyond_loopback_needs_public_and_a_token(metrics: dict, path: str, message: str) -> None:
    """Never by accident: a non-loopback address needs `public: true`, and that a token."""
    with pytest.raises(ConfigError) as e:
        parse_config({"metrics": metrics})
    assert e.value.path == path and message in str(e.value)
    spec = parse_config({"metrics": {**metrics, "public": True, "token_env": "T"}}).metrics
    assert spec.listen == ("0.0.0.0", 9090) and spec.public


def _scrape(port: int, token: str | None, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, "/metrics", headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def _used_names() -> set[str]:
    """Every metric name the dashboard and the alert rules use."""
    rules = yaml.safe_load((MONITORING / "prometheus-alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs += [var["query"] for var in dashboard["templating"]["list"] if var["type"] == "query"]
    return {name for expr in exprs for name in NAMES.findall(expr)}


def _samples(body: bytes) -> dict[str, list]:
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_a_live_scrape_has_what_monitoring_needs(start_proxylog, tmp_path: Path) -> None:
    """A running proxylog's /metrics answers only with the token, to HEAD as to GET, and has
    the standard collectors, build info, in flight, durations, bytes, bans and sink outcomes;
    every metric the dashboard and alert rules use is in it."""
    token_file = tmp_path / "metrics.token"
    token_file.write_text("s3cret-scrape-token\n")
    port = free_port()
    metrics = {"listen": f"127.0.0.1:{port}", "public": True, "token_file": str(token_file)}
    rules = [{"id": "any", "when": {"path": "^/"}, "threshold": 100, "window": "60s", "action": "tag"}]
    proxy = start_proxylog({"metrics": metrics, "rules": rules})
    for path in ("/a", "/b"):
        assert request(proxy.url, path).status == 200
    assert ctl(proxy, "ban", "192.0.2.9", "--ttl", "1m").returncode == 0
    assert _scrape(port, None)[0] == 401
    assert _scrape(port, "wrong")[0] == 401
    status, head_body, head_headers = _scrape(port, "s3cret-scrape-token", "HEAD")
    assert status == 200 and head_body == b"" and int(head_headers["Content-Length"]) > 0
    status, body, _ = _scrape(port, "s3cret-scrape-token")
    assert status == 200
    samples = _samples(body)
    missing = sorted({name for name in _used_names() if not name.startswith(STATE)} - set(samples))
    assert not missing, f"used by deploy/monitoring but not exposed: {missing}"
    assert len(_used_names()) > 15

    def value(name: str, **labels: str) -> float:
        return sum(s.value for s in samples[name] if labels.items() <= s.labels.items())

    assert value("proxylog_request_bytes_total") > 0 and value("proxylog_response_bytes_total") > 0
    assert value("proxylog_request_duration_seconds_count") >= 2
    assert value("proxylog_bans_total", event="created") == 1
    assert "proxylog_inflight_requests" in samples
    assert value("process_resident_memory_bytes") > 0 and "python_info" in samples
    [info] = samples["proxylog_build_info"]
    assert info.labels["version"] and info.labels["python"]
    assert value("proxylog_sink_records_total", outcome="written") >= 2


def test_the_redis_degraded_alert_names_metrics_a_redis_backed_proxylog_exposes(
    start_proxylog,
    redis_server: RedisServer,  # noqa: F811 (the imported fixture)
) -> None:
    """The alert rules' `proxylog_state_*` metrics exist with a Redis state backend, and
    `proxylog_state_degraded` turns 1 when redis-server dies, which is what the Redis
    degraded alert fires on."""
    port = free_port()
    state = {"backend": "redis", "url": redis_server.url, "key_prefix": "metrics:"}
    proxy = start_proxylog({"metrics": {"listen": f"127.0.0.1:{port}"}, "state": state})
    assert request(proxy.url, "/a").status == 200
    used = {name for name in _used_names() if name.startswith(STATE)}
    assert "proxylog_state_degraded" in used
    samples = _samples(_scrape(port, None)[1])
    missing = sorted(used - set(samples))
    assert not missing, f"used by deploy/monitoring but not exposed: {missing}"

    def degraded() -> list[float]:
        return [s.value for s in _samples(_scrape(port, None)[1])["proxylog_state_degraded"]]

    assert degraded() == [0.0]
    redis_server.stop()
    assert request(proxy.url, "/b").status == 200
    assert wait_until(lambda: degraded() == [1.0])
