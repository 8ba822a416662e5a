"""The file sink: private modes, size and time rotation with retention, reopen after an external
move, fsync policy, and a full disk (a real tmpfs) that pauses and resumes without a torn line."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import orjson
import pytest

from proxylog.config.sinks import FileSpec, RetrySpec, RotateSpec
from proxylog.errors import SinkError
from proxylog.sinks import SinkWorker
from proxylog.sinks.file import FileSink, rotated_files
from proxylog.testing import FakeClock
from tests._disk import fill, small_disk


def line(i: int, pad: int = 0) -> bytes:
    return orjson.dumps({"seq": i, "pad": "x" * pad}, option=orjson.OPT_APPEND_NEWLINE)


def seqs_in(*paths: Path | str) -> list[int]:
    out = []
    for path in paths:
        out += [orjson.loads(x)["seq"] for x in Path(path).read_bytes().splitlines() if b'"seq"' in x]
    return out


def test_file_sink_appends_with_private_modes(tmp_path: Path) -> None:
    """The file sink creates a 0750 directory and a 0640 file, and appends."""
    path = tmp_path / "logs" / "access.jsonl"
    sink = FileSink("f", str(path))
    sink.write([line(1), line(2)])
    sink.write([line(3)])
    sink.close()
    assert seqs_in(path) == [1, 2, 3]
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


def test_size_rotation_keeps_the_newest_files(tmp_path: Path) -> None:
    """Past `size` the file is renamed with a UTC stamp; only `keep` rotated files remain."""
    path = tmp_path / "access.jsonl"
    sink = FileSink("f", str(path), rotate=RotateSpec(size=1000, keep=3))
    for i in range(100):
        sink.write([line(i, pad=80)])
    sink.close()
    rotated = rotated_files(str(path))
    assert len(rotated) == 3 and sink.rotations > 3
    assert all(Path(p).stat().st_size <= 1000 for p in rotated)
    assert all(stat.S_IMODE(Path(p).stat().st_mode) == 0o640 for p in rotated)
    kept = seqs_in(*rotated, path)
    assert kept == list(range(100 - len(kept), 100)), "the newest records survive, in order"


def test_time_rotation_follows_the_clock(tmp_path: Path) -> None:
    """With `every`, the first write in a new period rotates the file (UTC-aligned periods)."""
    clock = FakeClock(start=1_800_000_000.0)
    path = tmp_path / "access.jsonl"
    sink = FileSink("f", str(path), rotate=RotateSpec(every=3600), clock=clock)
    sink.write([line(1)])
    clock.advance(60)
    sink.write([line(2)])
    clock.advance(3600)
    sink.write([line(3)])
    sink.close()
    [rotated] = rotated_files(str(path))
    assert rotated.endswith(".20270115T090100Z")
    assert seqs_in(rotated) == [1, 2] and seqs_in(path) == [3]


def test_reopen_follows_an_external_logrotate(tmp_path: Path) -> None:
    """After logrotate moves the file, reopen() makes the next write create the path again."""
    path = tmp_path / "access.jsonl"
    sink = FileSink("f", str(path), fsync=0)
    sink.write([line(1)])
    path.rename(tmp_path / "access.jsonl.1")
    sink.write([line(2)])  # still the old inode until reopened
    sink.reopen()
    sink.write([line(3)])
    sink.close()
    assert seqs_in(tmp_path / "access.jsonl.1") == [1, 2]
    assert seqs_in(path) == [3]


def test_a_full_disk_fails_the_batch_whole_and_leaves_no_torn_line(tmp_path: Path) -> None:
    """ENOSPC part-way through a batch cuts the file back to the batch start; after space is freed
    the same batch lands once."""
    with small_disk(tmp_path / "disk", "256k") as disk:
        path = disk / "access.jsonl"
        sink = FileSink("f", str(path))
        sink.write([line(0)])
        filler = fill(disk)
        batch = [line(i, pad=300) for i in range(1, 50)]
        with pytest.raises(SinkError) as err:
            sink.write(batch)
        assert err.value.retryable and "No space left" in str(err.value)
        assert seqs_in(path) == [0] and path.read_bytes().endswith(b"\n")
        filler.unlink()
        sink.write(batch)
        sink.close()
        assert seqs_in(path) == list(range(50))


async def test_the_worker_pauses_on_a_full_disk_and_announces_the_gap(tmp_path: Path) -> None:
    """A full disk makes the file sink unhealthy; records wait in the spool (on another disk), and
    after space is freed they all land in order behind a sink_recovered marker."""
    with small_disk(tmp_path / "disk", "256k") as disk:
        path = disk / "access.jsonl"
        spec = FileSpec(
            type="file",
            name="f",
            path=str(path),
            queue=100,
            batch=20,
            spool=str(tmp_path / "spool"),
            retry=RetrySpec(initial=0.01, max=0.05),
        )
        worker = SinkWorker(FileSink.from_spec(spec), spec)
        worker.start()
        worker.submit(line(0))
        assert await worker.flush(5)
        filler = fill(disk)
        for i in range(1, 1000):
            worker.submit(line(i, pad=100))
            while worker.depth > 80:
                await asyncio.sleep(0.005)
        while worker.stats.healthy:
            await asyncio.sleep(0.01)
        assert "No space left" in (worker.stats.last_error or "")
        filler.unlink()
        assert await worker.flush(20)
        await worker.close(2)
        docs = [orjson.loads(x) for x in path.read_bytes().splitlines()]
        assert [d["seq"] for d in docs if "seq" in d] == list(range(1000))
        [gap] = [d for d in docs if d.get("event", {}).get("action") == "sink_recovered"]
        assert "No space left" in gap["proxylog"]["outage"]["error"]
        assert gap["proxylog"]["outage"]["records_arrived"] > 0
        assert worker.stats.dropped == 0 and worker.stats.spooled > 0
