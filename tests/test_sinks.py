"""Sink worker semantics (bounded queue, exact drop counts, retry) and the stdout/file sinks."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import orjson
import pytest

from proxylog.config.sinks import SinkSpec
from proxylog.errors import SinkError
from proxylog.sinks import SinkWorker
from proxylog.sinks.file import FileSink
from proxylog.sinks.stdout import StdoutSink
from proxylog.testing import MemorySink


def line(i: int) -> bytes:
    return orjson.dumps({"seq": i}, option=orjson.OPT_APPEND_NEWLINE)


def seqs(sink: MemorySink) -> list[int]:
    return [doc["seq"] for doc in sink.documents() if "seq" in doc]


def markers(sink: MemorySink) -> list[dict]:
    return [doc for doc in sink.documents() if doc.get("event", {}).get("action") == "records_dropped"]


async def test_everything_submitted_is_delivered_in_order() -> None:
    """A healthy sink receives every line, in submission order, batched."""
    sink = MemorySink()
    worker = SinkWorker(sink, SinkSpec(type="memory", name="m", batch=7))
    worker.start()
    for i in range(100):
        worker.submit(line(i))
    assert await worker.flush(5)
    assert seqs(sink) == list(range(100))
    assert worker.stats.written == 100 and worker.stats.dropped == 0
    await worker.close(1)


async def test_a_full_queue_drops_and_announces_the_exact_count() -> None:
    """Past `queue`, lines are dropped and counted; a marker with the count precedes the next write."""
    sink = MemorySink()
    worker = SinkWorker(sink, SinkSpec(type="memory", name="m", queue=10))
    for i in range(25):  # the worker is not running yet: the queue fills
        worker.submit(line(i))
    assert worker.stats.dropped == 15
    worker.start()
    assert await worker.flush(5)
    assert seqs(sink) == list(range(10))
    [marker] = markers(sink)
    assert marker["proxylog"]["dropped"]["count"] == 15
    assert marker["proxylog"]["sink"] == "m"
    assert sink.documents()[0] == marker, "the marker comes before the surviving records"
    await worker.close(1)


async def test_retryable_failures_are_retried_until_delivered() -> None:
    """A sink failing with a retryable error gets the same batch again once it recovers."""
    sink = MemorySink()
    sink.fail_with = SinkError("collector down")
    worker = SinkWorker(sink, SinkSpec(type="memory", name="m"), retry_initial=0.001)
    worker.start()
    for i in range(5):
        worker.submit(line(i))
    while worker.stats.retries < 3:
        await asyncio.sleep(0.001)
    assert not worker.stats.healthy and worker.stats.last_error == "collector down"
    sink.fail_with = None
    assert await worker.flush(5)
    assert seqs(sink) == list(range(5))
    assert worker.stats.healthy and worker.stats.dropped == 0
    await worker.close(1)


async def test_permanent_failures_count_every_lost_record() -> None:
    """A non-retryable failure drops the batch but counts it; the marker follows on recovery."""
    sink = MemorySink()
    sink.fail_with = SinkError("poison", retryable=False)
    worker = SinkWorker(sink, SinkSpec(type="memory", name="m", batch=100), retry_initial=0.001)
    worker.start()
    for i in range(4):
        worker.submit(line(i))
    assert await worker.flush(5)
    assert worker.stats.dropped == 4
    sink.fail_with = None
    worker.submit(line(99))
    assert await worker.flush(5)
    assert seqs(sink) == [99]
    assert markers(sink)[0]["proxylog"]["dropped"]["count"] == 4
    await worker.close(1)


async def test_close_reports_what_could_not_be_delivered() -> None:
    """close() gives up after its timeout and returns how many records stayed undelivered."""
    sink = MemorySink()
    sink.fail_with = SinkError("down")
    worker = SinkWorker(sink, SinkSpec(type="memory", name="m", batch=2), retry_initial=0.001)
    worker.start()
    for i in range(5):
        worker.submit(line(i))
    assert await worker.close(0.05) == 5
    assert worker.stats.dropped == 5
    assert sink.closed


def test_file_sink_appends_with_private_modes(tmp_path: Path) -> None:
    """The file sink creates a 0750 directory and a 0640 file, and appends."""
    path = tmp_path / "logs" / "access.jsonl"
    sink = FileSink("f", str(path))
    sink.write([line(1), line(2)])
    sink.write([line(3)])
    sink.close()
    assert [orjson.loads(x)["seq"] for x in path.read_bytes().splitlines()] == [1, 2, 3]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750


def test_file_sink_errors_are_retryable_sink_errors(tmp_path: Path) -> None:
    """An unwritable path surfaces as a retryable SinkError, never an OSError."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sink = FileSink("f", str(blocker / "access.jsonl"))
    with pytest.raises(SinkError) as err:
        sink.write([line(1)])
    assert err.value.retryable
    sink.close()


def test_stdout_sink_broken_pipe_is_permanent() -> None:
    """Writing to a pipe whose reader is gone is a non-retryable SinkError, not a crash."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    sink = StdoutSink("stdout", fd=write_fd)
    try:
        with pytest.raises(SinkError) as err:
            sink.write([line(1)])
        assert not err.value.retryable
    finally:
        os.close(write_fd)


def test_stdout_sink_writes_whole_batches_to_its_fd() -> None:
    """Batches arrive on the fd as NDJSON."""
    read_fd, write_fd = os.pipe()
    sink = StdoutSink("stdout", fd=write_fd)
    sink.write([line(1), line(2)])
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        assert [orjson.loads(x)["seq"] for x in reader.read().splitlines()] == [1, 2]
