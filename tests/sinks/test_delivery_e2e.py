"""Sequence checks through the real `proxylog serve` in front of real Puma (rsyslog's seq-check
pattern): every request carries a unique number in its path, and after the run the delivered
set equals the sent set, under collector outages and 503s, a stalled stdout reader, a full
disk that is freed, rotation under load and an external logrotate. Where loss is the
configured policy (overflow: drop), the dropped markers account for every missing number."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxylog.sinks.file import rotated_files
from tests._collector import Collector
from tests._disk import fill, small_disk
from tests._http import request

FAST_RETRY = {"initial": "20ms", "max": "300ms"}


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.close()


def send(url: str, numbers: range | list[int], *, pad: int = 0) -> None:
    """One request per number, four at a time; every one must get a 200."""
    suffix = "?pad=" + "p" * pad if pad else ""
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda n: request(url, f"/seq/{n}{suffix}").status, numbers))
    assert statuses == [200] * len(statuses)


def seq_of(doc: dict[str, Any]) -> int | None:
    path = doc.get("url", {}).get("path", "")
    return int(path.rsplit("/", 1)[1]) if path.startswith("/seq/") else None


def seqs_in_docs(docs: list[dict[str, Any]]) -> set[int]:
    return {n for d in docs if (n := seq_of(d)) is not None}


def read_docs(*paths: Path | str) -> list[dict[str, Any]]:
    docs = []
    for path in paths:
        docs += [orjson.loads(x) for x in Path(path).read_bytes().splitlines()]
    return docs


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def http_sink(collector: Collector, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "url": collector.url + "/ingest",
        "retry": FAST_RETRY,
        "spool": str(tmp_path / "spool"),
        "queue": 200,
        "batch": 50,
        **extra,
    }


def test_collector_down_for_a_while_then_back(
    start_proxylog: Any, collector: Collector, tmp_path: Path
) -> None:
    """Requests keep succeeding while the collector is down; once it is back it has every record."""
    proxy = start_proxylog({"sinks": [http_sink(collector, tmp_path)]})
    send(proxy.url, range(0, 100))
    wait_for(lambda: len(collector.paths()) >= 100)
    collector.down()
    send(proxy.url, range(100, 400))
    collector.up()
    send(proxy.url, range(400, 500))
    wait_for(lambda: seqs_in_docs(collector.records) >= set(range(500)))
    assert seqs_in_docs(collector.records) == set(range(500))
    assert collector.events("sink_recovered"), "the gap is announced"
    assert not collector.events("records_dropped")
    assert proxy.stop() == 0


def test_collector_answering_503(start_proxylog: Any, collector: Collector, tmp_path: Path) -> None:
    """A collector answering 503 gets the same records again until it accepts them."""
    sink = http_sink(collector, tmp_path, format="elasticsearch", index="pl", url=collector.url + "/_bulk")
    proxy = start_proxylog({"sinks": [sink]})
    collector.status = 503
    send(proxy.url, range(0, 300))
    wait_for(lambda: len(collector.requests) >= 5)
    collector.status = None
    send(proxy.url, range(300, 400))
    wait_for(lambda: seqs_in_docs(collector.records) >= set(range(400)))
    assert seqs_in_docs(collector.records) == set(range(400))
    assert len(collector.paths()) == 400, "_bulk create ids keep resent records from being stored twice"
    assert proxy.stop() == 0


def test_a_stalled_stdout_reader_loses_nothing(start_proxylog: Any, tmp_path: Path) -> None:
    """Nobody reads stdout for a while: requests flow, records spool, and the late reader gets them all."""
    config = {"sinks": [{"type": "stdout", "queue": 50, "spool": str(tmp_path / "spool")}]}
    proxy = start_proxylog(config, stdout=subprocess.PIPE)
    send(proxy.url, range(400), pad=3000)  # ~3 KiB records: the 64 KiB pipe fills at once
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(proxy.proc.stdout))
    reader.start()
    wait_for(lambda: seqs_in_docs([orjson.loads(x) for x in list(lines)]) >= set(range(400)))
    assert proxy.stop() == 0
    reader.join(10)
    docs = [orjson.loads(x) for x in lines]
    assert seqs_in_docs(docs) == set(range(400))
    assert not [d for d in docs if d.get("event", {}).get("action") == "records_dropped"]


def test_a_stalled_stdout_reader_with_drop_policy_counts_every_loss(
    start_proxylog: Any, tmp_path: Path
) -> None:
    """With overflow: drop the queue overflows; delivered plus the dropped markers' counts is exactly
    what was sent."""
    config = {"sinks": [{"type": "stdout", "queue": 20, "batch": 10, "overflow": "drop"}]}
    proxy = start_proxylog(config, stdout=subprocess.PIPE)
    send(proxy.url, range(300), pad=3000)
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(proxy.proc.stdout))
    reader.start()

    def accounted() -> int:
        docs = [orjson.loads(x) for x in list(lines)]
        marked = sum(d["proxylog"]["dropped"]["count"] for d in docs if "dropped" in d.get("proxylog", {}))
        return len(seqs_in_docs(docs)) + marked

    wait_for(lambda: accounted() >= 300)
    assert proxy.stop() == 0
    reader.join(10)
    docs = [orjson.loads(x) for x in lines]
    markers = [d for d in docs if d.get("event", {}).get("action") == "records_dropped"]
    assert markers, "this run overflowed"
    assert len(seqs_in_docs(docs)) + sum(m["proxylog"]["dropped"]["count"] for m in markers) == 300


def test_a_full_disk_then_freed(start_proxylog: Any, tmp_path: Path) -> None:
    """The file sink's disk (a real 1 MiB tmpfs) fills up mid-run and is freed later: every record
    lands, in order, after a sink_recovered marker naming the error."""
    with small_disk(tmp_path / "disk", "1m") as disk:
        path = disk / "access.jsonl"
        sink = {
            "type": "file",
            "path": str(path),
            "retry": FAST_RETRY,
            "spool": str(tmp_path / "spool"),
            "queue": 100,
        }
        proxy = start_proxylog({"sinks": [sink]})
        send(proxy.url, range(0, 50))
        wait_for(lambda: path.exists() and len(read_docs(path)) >= 50)
        filler = fill(disk)
        send(proxy.url, range(50, 400), pad=500)
        filler.unlink()
        send(proxy.url, range(400, 450))
        wait_for(lambda: seqs_in_docs(read_docs(path)) >= set(range(450)))
        assert proxy.stop() == 0
        docs = read_docs(path)
        numbers = [n for d in docs if (n := seq_of(d)) is not None]
        assert sorted(numbers) == list(range(450)), "no gap and no duplicate"
        [gap] = [d for d in docs if d.get("event", {}).get("action") == "sink_recovered"]
        assert "No space left" in gap["proxylog"]["outage"]["error"]


def test_rotation_under_load(start_proxylog: Any, tmp_path: Path) -> None:
    """Size rotation every ~16 KiB while four clients send: the files together hold each record once."""
    path = tmp_path / "logs" / "access.jsonl"
    sink = {"type": "file", "path": str(path), "rotate": {"size": "16k", "keep": 1000}}
    proxy = start_proxylog({"sinks": [sink]})
    send(proxy.url, range(600))
    assert proxy.stop() == 0
    files = [*rotated_files(str(path)), path]
    assert len(files) > 10
    numbers = [n for d in read_docs(*files) if (n := seq_of(d)) is not None]
    assert sorted(numbers) == list(range(600))


def test_sighup_reopens_after_an_external_logrotate(start_proxylog: Any, tmp_path: Path) -> None:
    """logrotate moves the file and sends SIGHUP: records before and after are all there, split
    between the moved file and the new one."""
    path = tmp_path / "access.jsonl"
    proxy = start_proxylog({"sinks": [{"type": "file", "path": str(path)}]})
    moved = tmp_path / "access.jsonl.1"
    done = threading.Event()

    def rotate_midway() -> None:
        time.sleep(0.3)
        path.rename(moved)
        proxy.proc.send_signal(signal.SIGHUP)
        done.set()

    rotator = threading.Thread(target=rotate_midway)
    rotator.start()
    send(proxy.url, range(300))
    rotator.join()
    send(proxy.url, range(300, 350))
    wait_for(lambda: path.exists() and 349 in seqs_in_docs(read_docs(path)))
    assert proxy.stop() == 0
    numbers = [n for d in read_docs(moved, path) if (n := seq_of(d)) is not None]
    assert sorted(numbers) == list(range(350))
    assert seqs_in_docs(read_docs(path)), "the new file is in use"
