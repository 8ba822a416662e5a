"""The http sink against a real HTTP collector on loopback: formats, gzip, auth from a file or
the environment, retry on 5xx and outages, and poison batches split down to the refused lines."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxylog.config.sinks import HttpSpec, RetrySpec
from proxylog.errors import ConfigError, SinkError
from proxylog.sinks import PoisonBatch, SinkWorker
from proxylog.sinks.http import HttpSink
from tests._collector import POISON, Collector

FAST = RetrySpec(initial=0.01, max=0.1)


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.close()


def line(i: int, extra: bytes = b"") -> bytes:
    return b'{"@timestamp":"2026-11-26T16:14:32.123456Z","url":{"path":"/r/%d%s"}}\n' % (i, extra)


def http_spec(url: str, tmp_path: Path, **kwargs: Any) -> HttpSpec:
    kwargs.setdefault("retry", FAST)
    return HttpSpec(
        type="http",
        name="h",
        url=url,
        spool=str(tmp_path / "spool"),
        quarantine=str(tmp_path / "quarantine.ndjson"),
        **kwargs,
    )


def test_ndjson_batches_are_gzipped_and_delivered(collector: Collector, tmp_path: Path) -> None:
    """A batch is one gzip-compressed NDJSON POST."""
    sink = HttpSink(http_spec(collector.url + "/ingest", tmp_path))
    sink.write([line(i) for i in range(5)])
    sink.close()
    assert collector.paths() == [f"/r/{i}" for i in range(5)]
    [request] = collector.requests
    assert request["headers"]["Content-Encoding"] == "gzip"
    assert request["headers"]["Content-Type"] == "application/x-ndjson"


def test_elasticsearch_bulk_uses_create_with_stable_ids(collector: Collector, tmp_path: Path) -> None:
    """_bulk bodies carry create actions whose ids make a resend idempotent (409 = already stored)."""
    sink = HttpSink(http_spec(collector.url + "/_bulk", tmp_path, format="elasticsearch", index="proxylog"))
    sink.write([line(i) for i in range(3)])
    sink.write([line(i) for i in range(3)])  # a resend after an unknown outcome
    sink.close()
    assert collector.paths() == ["/r/0", "/r/1", "/r/2"]
    assert {r["_index"] for r in collector.records} == {"proxylog"}


def test_elasticsearch_item_errors_quarantine_only_those_items(collector: Collector, tmp_path: Path) -> None:
    """A _bulk answer with a 400 item refuses that item alone; the others are stored."""
    sink = HttpSink(http_spec(collector.url + "/logs/_bulk", tmp_path, format="elasticsearch"))
    with pytest.raises(PoisonBatch) as refused:
        sink.write([line(0), line(1, POISON), line(2)])
    assert [x for x, _ in refused.value.rejected] == [line(1, POISON)]
    assert "mapper_parsing_exception" in refused.value.rejected[0][1]
    assert collector.paths() == ["/r/0", "/r/2"]
    sink.close()


def test_loki_push_carries_labels_and_record_timestamps(collector: Collector, tmp_path: Path) -> None:
    """Loki gets one stream with the configured labels and each record's @timestamp in ns."""
    spec = http_spec(collector.url + "/loki/api/v1/push", tmp_path, format="loki", labels=(("job", "edge"),))
    sink = HttpSink(spec)
    sink.write([line(1), line(2)])
    sink.close()
    assert collector.paths() == ["/r/1", "/r/2"]
    assert collector.records[0]["_labels"] == {"job": "edge"}
    assert collector.records[0]["_ts"] == "1795709672123456000"


def test_the_token_comes_from_a_file_or_the_environment(
    collector: Collector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Authorization is built from token_file or token_env; a missing token is a ConfigError."""
    collector.token = "s3cret"
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    for spec in (
        http_spec(collector.url + "/i", tmp_path, token_file=str(token)),
        http_spec(collector.url + "/i", tmp_path, token_env="COLLECTOR_TOKEN"),
    ):
        monkeypatch.setenv("COLLECTOR_TOKEN", "s3cret")
        sink = HttpSink(spec)
        sink.write([line(len(collector.records) + 1)])
        sink.close()
    assert collector.paths() == ["/r/1", "/r/2"]
    with pytest.raises(ConfigError, match="token"):
        HttpSink(http_spec(collector.url + "/i", tmp_path, token_env="NO_SUCH_VARIABLE_SET"))


def test_a_401_is_retried_and_a_reopen_rereads_the_token(collector: Collector, tmp_path: Path) -> None:
    """Bad credentials are the collector's problem, not the batch's: retried, never quarantined."""
    collector.token = "new"
    token = tmp_path / "token"
    token.write_text("old")
    sink = HttpSink(http_spec(collector.url + "/i", tmp_path, token_file=str(token)))
    with pytest.raises(SinkError) as err:
        sink.write([line(1)])
    assert err.value.retryable and "401" in str(err.value)
    token.write_text("new")
    sink.reopen()
    sink.write([line(1)])
    sink.close()
    assert collector.paths() == ["/r/1"]


def test_a_poison_batch_is_split_to_the_refused_line(collector: Collector, tmp_path: Path) -> None:
    """A 400 for a batch splits it until the one refused line is isolated; the rest is delivered."""
    sink = HttpSink(http_spec(collector.url + "/i", tmp_path, gzip=False))
    lines = [line(i, POISON if i == 13 else b"") for i in range(40)]
    with pytest.raises(PoisonBatch) as refused:
        sink.write(lines)
    assert [x for x, _ in refused.value.rejected] == [lines[13]]
    assert refused.value.rejected[0][1].startswith("HTTP 400")
    assert sorted(collector.paths()) == sorted(f"/r/{i}" for i in range(40) if i != 13)
    assert sink.requests <= 2 * 6 + 1
    sink.close()


async def test_an_outage_then_recovery_delivers_everything_once(collector: Collector, tmp_path: Path) -> None:
    """Collector down, then 503, then up: the worker spools and every record arrives, in order."""
    sink = HttpSink(http_spec(collector.url + "/i", tmp_path))
    worker = SinkWorker(sink, http_spec(collector.url + "/i", tmp_path, queue=100, batch=20))
    worker.start()
    collector.down()
    for i in range(300):
        worker.submit(line(i))
        if i == 150:
            collector.up()
            collector.status = 503
        while worker.depth > 80:
            await asyncio.sleep(0.002)
    while worker.stats.spool_depth < 100 or "503" not in (worker.stats.last_error or ""):
        await asyncio.sleep(0.01)
    collector.status = None
    assert await worker.flush(30)
    await worker.close(2)
    assert collector.paths() == [f"/r/{i}" for i in range(300)]
    assert worker.stats.dropped == 0 and worker.stats.spooled > 0
    [recovered] = collector.events("sink_recovered")
    assert "503" in recovered["proxylog"]["outage"]["error"]


async def test_poison_lines_reach_the_quarantine_file(collector: Collector, tmp_path: Path) -> None:
    """Through the worker, a refused line is quarantined with its reason and announced to the collector."""
    spec = http_spec(collector.url + "/i", tmp_path)
    worker = SinkWorker(HttpSink(spec), spec)
    worker.start()
    for i in range(10):
        worker.submit(line(i, POISON if i == 4 else b""))
    assert await worker.flush(10)
    while not collector.events("records_quarantined"):
        await asyncio.sleep(0.01)
    await worker.close(2)
    [kept] = [orjson.loads(x) for x in (tmp_path / "quarantine.ndjson").read_bytes().splitlines()]
    assert kept["record"]["url"]["path"] == "/r/4ZZPOISONZZ"
    assert kept["quarantine"]["reason"].startswith("HTTP 400")
    assert collector.events("records_quarantined")[0]["proxylog"]["quarantined"]["count"] == 1
    assert worker.stats.quarantined == 1 and worker.stats.written == 9
