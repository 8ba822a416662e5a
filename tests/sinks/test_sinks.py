"""Sink worker semantics: bounded queue, batching, retry, spool overflow and replay, exact drop
counts and markers, quarantine; and the stdout sink on a real pipe."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxylog.config.redact import RedactSpec
from proxylog.config.sinks import RetrySpec, SinkSpec
from proxylog.errors import SinkError
from proxylog.redact import Redactor
from proxylog.sinks import PartialFailure, PoisonBatch, SinkWorker
from proxylog.sinks.spool import Spool
from proxylog.sinks.stdout import StdoutSink
from proxylog.testing import MemorySink

FAST = RetrySpec(initial=0.001, max=0.01)


def line(i: int) -> bytes:
    return orjson.dumps({"seq": i}, option=orjson.OPT_APPEND_NEWLINE)


def seqs_of(docs: list[dict[str, Any]]) -> list[int]:
    return [doc["seq"] for doc in docs if "seq" in doc]


def seqs(sink: MemorySink) -> list[int]:
    return seqs_of(sink.documents())


def events(sink: MemorySink, action: str) -> list[dict[str, Any]]:
    return [d for d in sink.documents() if d.get("event", {}).get("action") == action]


def spec(tmp_path: Path, **kwargs: Any) -> SinkSpec:
    kwargs.setdefault("retry", FAST)
    return SinkSpec(type="memory", name="m", spool=str(tmp_path / "spool"), **kwargs)


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.002)


async def test_everything_submitted_is_delivered_in_order(tmp_path: Path) -> None:
    """A healthy sink receives every line, in submission order, batched."""
    sink = MemorySink()
    worker = SinkWorker(sink, spec(tmp_path, batch=7))
    worker.start()
    for i in range(100):
        worker.submit(line(i))
    assert await worker.flush(5)
    assert seqs(sink) == list(range(100))
    assert worker.stats.written == 100 and worker.stats.dropped == 0
    assert not (tmp_path / "spool").exists(), "a healthy sink never touches the disk"
    await worker.close(1)


async def test_a_full_queue_drops_and_announces_the_exact_count(tmp_path: Path) -> None:
    """With overflow: drop, lines past `queue` are counted; a marker with the count precedes the rest."""
    sink = MemorySink()
    worker = SinkWorker(sink, spec(tmp_path, queue=10, overflow="drop"))
    for i in range(25):  # the worker is not running yet: the queue fills
        worker.submit(line(i))
    assert worker.stats.dropped == 15
    worker.start()
    assert await worker.flush(5)
    assert seqs(sink) == list(range(10))
    [marker] = events(sink, "records_dropped")
    assert marker["proxylog"]["dropped"]["count"] == 15
    assert marker["proxylog"]["sink"] == "m"
    assert sink.documents()[0] == marker, "the marker comes before the surviving records"
    await worker.close(1)


async def test_a_marker_is_written_even_when_no_record_follows(tmp_path: Path) -> None:
    """Losses are announced while the sink is idle, not only with the next record."""
    sink = MemorySink()
    worker = SinkWorker(sink, spec(tmp_path, queue=2, overflow="drop"))
    for i in range(5):
        worker.submit(line(i))
    worker.start()
    await wait_until(lambda: events(sink, "records_dropped"))
    assert events(sink, "records_dropped")[0]["proxylog"]["dropped"]["count"] == 3
    await worker.close(1)


async def test_retryable_failures_are_retried_until_delivered(tmp_path: Path) -> None:
    """A sink failing with a retryable error gets the same batch again once it recovers."""
    sink = MemorySink()
    sink.fail_with = SinkError("collector down")
    worker = SinkWorker(sink, spec(tmp_path, overflow="drop"))
    worker.start()
    for i in range(5):
        worker.submit(line(i))
    await wait_until(lambda: worker.stats.retries >= 3)
    assert not worker.stats.healthy and worker.stats.last_error == "collector down"
    sink.fail_with = None
    assert await worker.flush(5)
    assert seqs(sink) == list(range(5))
    assert worker.stats.healthy and worker.stats.dropped == 0
    [recovered] = events(sink, "sink_recovered")
    assert recovered["proxylog"]["outage"]["error"] == "collector down"
    assert recovered["proxylog"]["outage"]["records_arrived"] == 0
    await worker.close(1)


async def test_permanent_failures_count_every_lost_record(tmp_path: Path) -> None:
    """A non-retryable failure drops the batch but counts it; the marker follows on recovery."""
    sink = MemorySink()
    sink.fail_with = SinkError("poison", retryable=False)
    worker = SinkWorker(sink, spec(tmp_path, batch=100))
    worker.start()
    for i in range(4):
        worker.submit(line(i))
    await wait_until(lambda: worker.stats.dropped == 4)
    sink.fail_with = None
    worker.submit(line(99))
    assert await worker.flush(5)
    assert seqs(sink) == [99]
    assert events(sink, "records_dropped")[0]["proxylog"]["dropped"]["count"] == 4
    await worker.close(1)


async def test_close_without_a_spool_reports_what_could_not_be_delivered(tmp_path: Path) -> None:
    """With overflow: drop, close() gives up after its timeout and counts what stayed undelivered."""
    sink = MemorySink()
    sink.fail_with = SinkError("down")
    worker = SinkWorker(sink, spec(tmp_path, batch=2, overflow="drop"))
    worker.start()
    for i in range(5):
        worker.submit(line(i))
    assert await worker.close(0.05) == 5
    assert worker.stats.dropped == 5
    assert sink.closed


async def test_an_outage_spools_to_disk_and_replays_in_order(tmp_path: Path) -> None:
    """While the sink fails, the queue moves to the spool; on recovery every record arrives, in order."""
    sink = MemorySink()
    sink.fail_with = SinkError("collector down")
    worker = SinkWorker(sink, spec(tmp_path, queue=50, batch=10))
    worker.start()
    for i in range(400):
        worker.submit(line(i))
        if i % 20 == 19:
            await wait_until(lambda: worker.depth <= 25)  # the pump keeps memory bounded
    await wait_until(lambda: worker.stats.spool_depth >= 380)
    assert worker.stats.dropped == 0 and worker.stats.spooled >= 380
    sink.fail_with = None
    assert await worker.flush(10)
    assert seqs(sink) == list(range(400))
    assert worker.stats.written == 400 and worker.stats.spool_depth == 0
    assert 300 <= events(sink, "sink_recovered")[0]["proxylog"]["outage"]["records_arrived"] <= 400
    await worker.close(1)


async def test_records_left_at_shutdown_are_replayed_by_the_next_run(tmp_path: Path) -> None:
    """Closing while the sink is down keeps the backlog on disk; the next worker delivers it first."""
    down = MemorySink()
    down.fail_with = SinkError("down")
    first = SinkWorker(down, spec(tmp_path, batch=4))
    first.start()
    for i in range(30):
        first.submit(line(i))
    await wait_until(lambda: first.stats.retries >= 1)
    assert await first.close(0.2) == 0, "nothing is lost: it waits on disk"
    assert first.stats.dropped == 0

    up = MemorySink()
    second = SinkWorker(up, spec(tmp_path, batch=4))
    second.start()
    for i in range(30, 40):
        second.submit(line(i))
    assert await second.flush(5)
    assert seqs(up) == list(range(40))
    await second.close(1)


async def test_a_full_spool_drops_with_the_exact_count(tmp_path: Path) -> None:
    """Past spool_max, further records are dropped and the marker carries the exact count."""
    sink = MemorySink()
    sink.fail_with = SinkError("down")
    worker = SinkWorker(sink, spec(tmp_path, queue=20, batch=5, spool_max=4096))
    worker.start()
    sent = 0
    while worker.stats.dropped < 50:
        worker.submit(line(sent))
        sent += 1
        await asyncio.sleep(0)
    sink.fail_with = None
    assert await worker.flush(10)
    delivered = seqs(sink)
    assert delivered == sorted(delivered), "what survives keeps its order"
    counted = sum(m["proxylog"]["dropped"]["count"] for m in events(sink, "records_dropped"))
    assert len(delivered) + counted == sent
    assert counted == worker.stats.dropped
    await worker.close(1)


async def test_losses_to_a_full_spool_at_shutdown_are_announced_by_the_next_run(tmp_path: Path) -> None:
    """The sink is down until shutdown and the spool is full: the next run replays what the
    spool kept and announces every record lost, with the exact count, although the marker
    itself no longer fits under spool_max."""
    sink = MemorySink()
    sink.fail_with = SinkError("down")
    worker = SinkWorker(sink, spec(tmp_path, queue=100, batch=5, spool_max=200))
    worker.start()
    for i in range(40):  # about 440 bytes: the spool takes what fits, the rest waits in memory
        worker.submit(line(i))
    await wait_until(lambda: worker.stats.spool_depth > 0 and worker.stats.spool_bytes > 150)
    await worker.close(0.5)
    lost = worker.stats.dropped
    assert not sink.lines and lost > 0

    next_run = MemorySink()
    replay = SinkWorker(next_run, spec(tmp_path, spool_max=200))
    replay.start()
    await wait_until(lambda: events(next_run, "records_dropped"))
    assert await replay.flush(5)
    [marker] = events(next_run, "records_dropped")
    assert marker["proxylog"]["dropped"]["count"] == lost
    assert len(seqs(next_run)) + lost == 40
    await replay.close(1)


class PoisonSink(MemorySink):
    """Refuses lines containing b'ZZBADZZ' (as a collector's 400 would), accepting the rest."""

    def write(self, lines: list[bytes]) -> None:
        bad = [(x, "HTTP 400: mapper_parsing_exception") for x in lines if b"ZZBADZZ" in x]
        self.lines.extend(x for x in lines if b"ZZBADZZ" not in x)
        if bad:
            raise PoisonBatch("refused", bad)


async def test_poison_lines_are_quarantined_counted_and_announced(tmp_path: Path) -> None:
    """Lines a receiver refuses go to the quarantine file with the reason; a marker tells the stream."""
    sink = PoisonSink()
    quarantine = tmp_path / "q" / "m.ndjson"
    worker = SinkWorker(sink, spec(tmp_path, quarantine=str(quarantine)))
    worker.start()
    worker.submit(line(1))
    worker.submit(orjson.dumps({"seq": 2, "x": "ZZBADZZ"}) + b"\n")
    worker.submit(line(3))
    assert await worker.flush(5)
    await wait_until(lambda: events(sink, "records_quarantined"))
    assert seqs(sink) == [1, 3]
    [kept] = [orjson.loads(x) for x in quarantine.read_bytes().splitlines()]
    assert kept["record"] == {"seq": 2, "x": "ZZBADZZ"}
    assert kept["quarantine"]["reason"].startswith("HTTP 400")
    assert worker.stats.quarantined == 1 and worker.stats.dropped == 0 and worker.stats.written == 2
    assert events(sink, "records_quarantined")[0]["proxylog"]["quarantined"]["count"] == 1
    assert oct(quarantine.stat().st_mode & 0o777) == "0o640"
    await worker.close(1)


class FlakySink(MemorySink):
    """Delivers the first `ok` lines of a batch, then fails once with PartialFailure."""

    def __init__(self, ok: int) -> None:
        super().__init__()
        self.ok = ok
        self.attempts: list[list[bytes]] = []

    def write(self, lines: list[bytes]) -> None:
        self.attempts.append(list(lines))
        if self.ok is not None and len(self.attempts) == 1:
            self.lines.extend(lines[: self.ok])
            raise PartialFailure("half", lines[self.ok :])
        self.lines.extend(lines)


async def test_partial_failures_resend_only_the_rest(tmp_path: Path) -> None:
    """After a partial delivery the worker retries exactly the undelivered lines."""
    sink = FlakySink(ok=3)
    worker = SinkWorker(sink, spec(tmp_path, batch=10))
    for i in range(10):
        worker.submit(line(i))
    worker.start()
    assert await worker.flush(5)
    assert seqs(sink) == list(range(10))
    assert [seqs_of([orjson.loads(x) for x in a]) for a in sink.attempts] == [
        list(range(10)),
        list(range(3, 10)),
    ]
    await worker.close(1)


class RefusesTheMarkerThenDies(MemorySink):
    """Takes the records of its first batch but not the marker leading it, then is down."""

    def write(self, lines: list[bytes]) -> None:
        if not self.lines:
            records = [x for x in lines if b"records_dropped" not in x]
            self.lines.extend(records)
            raise PartialFailure("the marker was refused", [x for x in lines if x not in records])
        raise SinkError("collector down")


async def test_a_marker_cut_off_by_a_partial_failure_survives_shutdown(tmp_path: Path) -> None:
    """A marker left undelivered by a partial write, with the sink then down until shutdown,
    goes to the spool and reaches the stream on the next run: the loss is never forgotten."""
    sink = RefusesTheMarkerThenDies()
    worker = SinkWorker(sink, spec(tmp_path, queue=3, batch=10))
    for i in range(5):  # the worker is not running yet: 2 lines overflow the queue
        worker.submit(line(i))
    assert worker.stats.dropped == 2
    worker.start()
    await wait_until(lambda: worker.stats.retries >= 2)
    await worker.close(0.2)
    assert seqs(sink) == [0, 1, 2] and not events(sink, "records_dropped")

    next_run = MemorySink()
    replay = SinkWorker(next_run, spec(tmp_path))
    replay.start()
    await wait_until(lambda: events(next_run, "records_dropped"))
    [marker] = events(next_run, "records_dropped")
    assert marker["proxylog"]["dropped"]["count"] == 2
    await replay.close(1)


class DownThenHalfSent(MemorySink):
    """Down once (an outage opens), then sends only the first line of a batch and fails on
    the rest, as UDP syslog does; then healthy."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def write(self, lines: list[bytes]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise SinkError("down")
        if self.calls == 2:
            self.lines.extend(lines[:1])
            raise PartialFailure("send failed", lines[1:])
        self.lines.extend(lines)


async def test_markers_sent_before_a_partial_failure_are_not_repeated(tmp_path: Path) -> None:
    """The drop marker got through, the recovery marker did not: the loss is announced once,
    the recovery once, every record once."""
    sink = DownThenHalfSent()
    worker = SinkWorker(sink, spec(tmp_path, queue=3, batch=10, overflow="drop"))
    for i in range(5):
        worker.submit(line(i))
    worker.start()
    await wait_until(lambda: sink.calls >= 3)
    assert await worker.flush(5)
    [dropped] = events(sink, "records_dropped")
    assert dropped["proxylog"]["dropped"]["count"] == 2
    assert len(events(sink, "sink_recovered")) == 1
    assert seqs(sink) == [0, 1, 2]
    await worker.close(1)


async def test_error_texts_are_redacted_before_they_reach_a_marker(tmp_path: Path) -> None:
    """A collector's reply quoted in an error can hold request data: the sink_recovered
    marker and the worker's status carry it redacted."""
    sink = MemorySink()
    sink.fail_with = SinkError('HTTP 400: {"doc": "/login?password=hunter2"}')
    worker = SinkWorker(sink, spec(tmp_path), clean=Redactor(RedactSpec()).clean_text)
    worker.submit(line(0))
    worker.start()
    await wait_until(lambda: worker.stats.retries >= 1)
    assert "hunter2" not in (worker.stats.last_error or "")
    sink.fail_with = None
    await wait_until(lambda: events(sink, "sink_recovered"))
    [recovered] = events(sink, "sink_recovered")
    assert recovered["proxylog"]["outage"]["error"].startswith("HTTP 400:")
    assert "hunter2" not in recovered["proxylog"]["outage"]["error"]
    await worker.close(1)


class CrashingSink(MemorySink):
    """A sink with a bug: raises a plain exception."""

    def write(self, lines: list[bytes]) -> None:
        raise ValueError("bug")


async def test_a_crashing_sink_counts_its_losses_and_keeps_the_thread(tmp_path: Path) -> None:
    """An unexpected exception in a sink counts the batch as dropped; the worker keeps running."""
    worker = SinkWorker(CrashingSink(), spec(tmp_path, batch=3))
    worker.start()
    for i in range(6):
        worker.submit(line(i))
    await wait_until(lambda: worker.stats.dropped == 6)
    assert worker.stats.last_error == "ValueError: bug"
    await worker.close(0.1)


async def test_snapshot_exposes_counters_and_health(tmp_path: Path) -> None:
    """snapshot() gives the numbers a metrics endpoint needs."""
    worker = SinkWorker(MemorySink(), spec(tmp_path, queue=3, overflow="drop"))
    for i in range(5):
        worker.submit(line(i))
    snap = worker.snapshot()
    assert snap["queue_depth"] == 3 and snap["queue_capacity"] == 3
    assert snap["dropped"] == 2 and snap["submitted"] == 5 and snap["healthy"] is True
    for key in ("written", "retries", "spooled", "spool_depth", "quarantined", "last_error", "name"):
        assert key in snap
    await worker.close(0.1)


async def test_submit_never_blocks_while_the_sink_is_stuck(tmp_path: Path) -> None:
    """A write that blocks forever (a stalled pipe) leaves submit() instant; the overflow spools."""
    release = threading.Event()

    class Stuck(MemorySink):
        def write(self, lines: list[bytes]) -> None:
            release.wait()
            self.lines.extend(lines)

    sink = Stuck()
    worker = SinkWorker(sink, spec(tmp_path, queue=1000, batch=10))
    worker.start()
    for i in range(5000):
        worker.submit(line(i))
        if i % 100 == 99:
            await wait_until(lambda: worker.depth < 800)  # the pump drains memory to disk
    await wait_until(lambda: worker.stats.spool_depth > 4000)
    assert worker.stats.dropped == 0
    release.set()
    assert await worker.flush(20)
    assert seqs(sink) == list(range(5000))
    assert worker.stats.dropped == 0
    await worker.close(1)


async def test_stdout_sink_with_a_stalled_reader_delivers_everything_once_read(tmp_path: Path) -> None:
    """A real pipe nobody reads fills up; records spool, and a reader that wakes gets every one in order."""
    read_fd, write_fd = os.pipe()
    worker = SinkWorker(StdoutSink("stdout", fd=write_fd), spec(tmp_path, queue=50, batch=20))
    worker.start()
    padding = "p" * 2000
    for i in range(300):
        worker.submit(orjson.dumps({"seq": i, "pad": padding}) + b"\n")
        await wait_until(lambda: worker.depth < 45)
    await wait_until(lambda: worker.stats.spooled > 0)
    assert worker.stats.dropped == 0
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_fd, 65536), b"")))
    reader.start()
    assert await worker.flush(20)
    await worker.close(1)
    os.close(write_fd)
    reader.join(10)
    os.close(read_fd)
    docs = [orjson.loads(x) for x in b"".join(chunks).splitlines()]
    assert seqs_of(docs) == list(range(300))


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


def test_spool_keeps_order_across_prepend_commit_and_reload(tmp_path: Path) -> None:
    """Spool: append, prepend (older), partial commit, reopen by a new owner → the rest, in order."""
    spool = Spool(str(tmp_path / "s"), 1 << 20, segment_bytes=64)
    assert spool.append([line(i) for i in range(3, 10)]) == 7
    assert spool.prepend([line(1), line(2)])
    got = spool.read(4)
    assert [orjson.loads(x)["seq"] for x in got] == [1, 2]  # one segment at a time
    spool.commit(2)
    got = spool.read(2)
    spool.commit(1)
    spool.close()
    again = Spool(str(tmp_path / "s"), 1 << 20, segment_bytes=64)
    assert again.acquire()
    out = []
    while again.depth:
        batch = again.read(3)
        again.commit(len(batch))
        out += [orjson.loads(x)["seq"] for x in batch]
    assert out == [4, 5, 6, 7, 8, 9]
    again.close()


def test_spool_drops_a_torn_line_left_by_a_crash(tmp_path: Path) -> None:
    """A segment ending mid-line (a crash during append) loses only that line on reload."""
    spool = Spool(str(tmp_path / "s"), 1 << 20)
    spool.append([line(1), line(2)])
    spool.close()
    [segment] = sorted((tmp_path / "s").glob("*.ndjson"))
    with open(segment, "ab") as f:
        f.write(b'{"seq": 3')
    again = Spool(str(tmp_path / "s"), 1 << 20)
    assert again.acquire() and again.depth == 2
    assert [orjson.loads(x)["seq"] for x in again.read(10)] == [1, 2]
    again.close()


def test_a_spool_directory_is_held_by_one_owner_at_a_time(tmp_path: Path) -> None:
    """A second owner of the same spool base gets a sibling directory, never the same one."""
    one = Spool(str(tmp_path / "s"), 1 << 20)
    two = Spool(str(tmp_path / "s"), 1 << 20)
    assert one.acquire() and two.acquire()
    assert one.path == str(tmp_path / "s") and two.path == str(tmp_path / "s") + ".1"
    one.close()
    two.close()
