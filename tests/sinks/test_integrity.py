"""The HMAC chain of file sinks and `proxylog verify`: intact files pass (across rotation, reopen
and restarts), and every random single-byte edit, deletion, reorder and truncation is caught
with its kind and first bad sequence number."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from proxylog.cli import main
from proxylog.config.sinks import RotateSpec
from proxylog.sinks.file import FileSink, rotated_files
from proxylog.sinks.integrity import Chain, parse_line, verify

KEY = b"k" * 32
TRIALS = 200


def line(i: int) -> bytes:
    return orjson.dumps({"seq_sent": i, "url": {"path": f"/r/{i}"}}, option=orjson.OPT_APPEND_NEWLINE)


def chained_file(tmp_path: Path, records: int = 60) -> Path:
    """A file written by a chained file sink, closed (sealed)."""
    path = tmp_path / "access.jsonl"
    sink = FileSink("f", str(path), chain=Chain(KEY, "f"))
    for start in range(0, records, 7):
        sink.write([line(i) for i in range(start, min(start + 7, records))])
    sink.close()
    return path


def seq_at(lines: list[bytes], index: int) -> int:
    parsed = parse_line(lines[index])
    assert parsed is not None
    return parsed.seq


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "chain.key"
    path.write_bytes(KEY + b"\n")
    return path


def test_a_sealed_chain_verifies(tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file written and closed by a chained sink verifies: exit 0 and the record count."""
    path = chained_file(tmp_path)
    assert main(["verify", str(path), "--key-file", str(key_file)]) == 0
    assert "62 records intact" in capsys.readouterr().out  # start + 60 + seal
    records = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert records[0]["event"]["action"] == "integrity_chain_start"
    assert records[-1]["event"]["action"] == "integrity_chain_end"
    assert records[1]["seq_sent"] == 0 and records[1]["proxylog.integrity.seq"] == 2


def test_the_chain_continues_across_rotation_reopen_and_restart(tmp_path: Path, key_file: Path) -> None:
    """Rotated files, a reopen and a second process appending to the same file form one chain."""
    path = tmp_path / "access.jsonl"
    sink = FileSink("f", str(path), rotate=RotateSpec(size=2000), chain=Chain(KEY, "f"))
    for i in range(40):
        sink.write([line(i)])
    sink.reopen()
    sink.write([line(40)])
    sink.close()
    again = FileSink("f", str(path), rotate=RotateSpec(size=2000), chain=Chain(KEY, "f"))
    again.write([line(41)])
    again.close()
    files = [*rotated_files(str(path)), str(path)]
    assert len(files) > 3
    assert main(["verify", *files, "--key-file", str(key_file)]) == 0
    finding = verify(files, KEY)
    assert finding.kind is None
    assert verify(files[1:], KEY).kind is None, "a chain whose oldest files were pruned still verifies"


def test_an_open_file_needs_the_open_flag(tmp_path: Path, key_file: Path) -> None:
    """A file still being written has no seal: a truncation unless --open says it is live."""
    path = tmp_path / "access.jsonl"
    sink = FileSink("f", str(path), chain=Chain(KEY, "f"))
    sink.write([line(1), line(2)])
    assert main(["verify", str(path), "--key-file", str(key_file)]) == 1
    assert main(["verify", str(path), "--key-file", str(key_file), "--open"]) == 0
    sink.close()


def test_usage_errors_exit_2(tmp_path: Path, key_file: Path) -> None:
    """A missing file or an unreadable or short key is a usage error (exit 2), not a verdict."""
    path = chained_file(tmp_path)
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    assert main(["verify", str(tmp_path / "missing.jsonl"), "--key-file", str(key_file)]) == 2
    assert main(["verify", str(path), "--key-file", str(tmp_path / "nokey")]) == 2
    assert main(["verify", str(path), "--key-file", str(short)]) == 2


def test_a_wrong_key_is_reported_as_an_edit(tmp_path: Path) -> None:
    """Verifying with another key fails at the first record."""
    path = chained_file(tmp_path)
    finding = verify([str(path)], b"x" * 32)
    assert finding.kind == "edit" and finding.line == 1


def test_every_random_single_byte_edit_is_detected(tmp_path: Path) -> None:
    """Any one byte changed to any other value is an edit at the sequence number of its line."""
    data = chained_file(tmp_path).read_bytes()
    rng = random.Random(5)
    target = tmp_path / "edited.jsonl"
    for _ in range(TRIALS):
        offset = rng.randrange(len(data))
        value = rng.choice([b for b in range(256) if b != data[offset]])
        target.write_bytes(data[:offset] + bytes([value]) + data[offset + 1 :])
        finding = verify([str(target)], KEY)
        line_index = data.count(b"\n", 0, offset)
        assert finding.kind == "edit", (offset, value, finding)
        assert finding.seq in (None, line_index + 1), (offset, finding)


def test_every_random_deletion_is_detected(tmp_path: Path) -> None:
    """Removing 1 to 3 whole lines is a deletion at the first missing sequence number (a truncation
    when the end is removed)."""
    lines = chained_file(tmp_path).read_bytes().splitlines(keepends=True)
    rng = random.Random(6)
    target = tmp_path / "deleted.jsonl"
    for _ in range(TRIALS):
        start = rng.randrange(len(lines))
        count = rng.randint(1, 3)
        kept = lines[:start] + lines[start + count :]
        target.write_bytes(b"".join(kept))
        finding = verify([str(target)], KEY)
        if start + count >= len(lines):
            assert finding.kind == "truncation", (start, count, finding)
            assert finding.seq == seq_at(lines, start), finding
        elif start == 0:  # the head is gone: what came before the first line left is unknowable
            assert finding.kind == "deletion", (start, count, finding)
            assert finding.seq == seq_at(lines, count) - 1, (start, count, finding)
        else:
            assert finding.kind == "deletion", (start, count, finding)
            assert finding.seq == seq_at(lines, start), (start, count, finding)


def test_every_random_reorder_is_detected(tmp_path: Path) -> None:
    """Swapping two lines, or moving one elsewhere, is a reorder at the first displaced number."""
    lines = chained_file(tmp_path).read_bytes().splitlines(keepends=True)
    rng = random.Random(7)
    target = tmp_path / "reordered.jsonl"
    for trial in range(TRIALS):
        a, b = sorted(rng.sample(range(len(lines)), 2))
        moved = list(lines)
        if trial % 2:
            moved[a], moved[b] = moved[b], moved[a]
        else:
            moved.insert(b, moved.pop(a))
        target.write_bytes(b"".join(moved))
        finding = verify([str(target)], KEY)
        assert finding.kind == "reorder", (a, b, finding)
        assert finding.seq in (None, seq_at(lines, a)), (a, b, finding)


def test_every_random_truncation_is_detected(tmp_path: Path) -> None:
    """Cutting the file at any byte is a truncation at the first sequence number not intact."""
    data = chained_file(tmp_path).read_bytes()
    rng = random.Random(8)
    target = tmp_path / "cut.jsonl"
    for _ in range(TRIALS):
        cut = rng.randrange(1, len(data))
        target.write_bytes(data[:cut])
        finding = verify([str(target)], KEY)
        assert finding.kind == "truncation", (cut, finding)
        first_bad = data.count(b"\n", 0, cut) + 1
        if data[cut : cut + 1] == b"\n":  # only the newline is gone: that record is intact
            first_bad += 1
        if first_bad == 1:  # nothing intact: no number to report
            assert finding.seq is None, (cut, finding)
        else:
            assert finding.seq == first_bad, (cut, finding)


def test_without_a_key_structure_is_still_checked(tmp_path: Path, key_file: Path) -> None:
    """With no key, deletions and reorders are still caught (contents are not authenticated)."""
    lines = chained_file(tmp_path).read_bytes().splitlines(keepends=True)
    target = tmp_path / "t.jsonl"
    target.write_bytes(b"".join(lines[:10] + lines[11:]))
    assert verify([str(target)], None).kind == "deletion"
    assert main(["verify", str(target)]) == 1
