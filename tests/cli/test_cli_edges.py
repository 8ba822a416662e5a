"""CLI rough edges: `ctl` usage errors exit 2 before anything is contacted, durations compound,
YAML syntax errors name the file, `check` reports every section, `verify` knows a live file,
`replay` shows progress on a terminal."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from proxylog.cli import main
from proxylog.config import ConfigError, load_config, parse_duration
from proxylog.record import encode_record
from proxylog.sinks.file import FileSink
from proxylog.sinks.integrity import Chain
from proxylog.testing import make_record
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mode", "bogus"], "expected one of monitor, enforce"),
        (["ban", "10.0.0.0/33"], "expected an IP address or CIDR"),
        (["unban", "not-an-ip"], "expected an IP address or CIDR"),
        (["allow", "add", "10.0.0.300"], "expected an IP address or CIDR"),
        (["ban", "192.0.2.1", "--ttl", "soon"], "--ttl 'soon'"),
        (["reload", "extra"], "wrong arguments"),
    ],
)
def test_usage_errors_exit_2_without_contacting_proxylog(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    """A bad mode, address, TTL or argument count is a usage error (2), not a refusal (1)."""
    assert main(["ctl", "--socket", str(tmp_path / "none.sock"), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m30s", 90.0), ("1h30m", 5400.0), ("1d12h", 129600.0), ("2m500ms", 120.5), ("45s", 45.0)],
)
def test_compound_durations(text: str, seconds: float) -> None:
    """Durations add up from the largest unit to the smallest."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30s1m", "1m1m", "1m 30s", "m30s"])
def test_compound_durations_refuse_what_is_likely_a_typo(text: str) -> None:
    """Units out of order or repeated are refused, not guessed."""
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path) -> None:
    """`check` and `serve` point at the file and line of a syntax error, not <unicode string>."""
    path = tmp_path / "proxylog.yaml"
    path.write_text("upstream: http://127.0.0.1:3000\nlisten: [a\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f'in "{path}", line 2' in str(e.value) and "<unicode string>" not in str(e.value)


def test_verify_tells_a_live_file_from_a_cut_one(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unsealed file still open by a process is named as live (with --open as the way to
    check it); a file cut mid-line gets no such hint."""
    key = b"k" * 32
    key_file = tmp_path / "chain.key"
    key_file.write_bytes(key)
    path = tmp_path / "access.jsonl"
    sink = FileSink("f", str(path), chain=Chain(key, "f"))
    sink.write([encode_record(make_record())])
    hold = f"import time; f = open({str(path)!r}, 'ab'); print(1, flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline()
        assert main(["verify", str(path), "--key-file", str(key_file)]) == 1
        err = capsys.readouterr().err
        assert f"is open by pid {holder.pid}" in err and "--open" in err
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    sink.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # cut inside the seal line
    assert main(["verify", str(path), "--key-file", str(key_file)]) == 1
    assert "--open" not in capsys.readouterr().err


def test_check_reports_every_bad_section_and_has_json(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` names an error in each bad section, not only the first, and --json lists them."""
    path = tmp_path / "proxylog.yaml"
    path.write_text(
        "listen: nowhere\ntimeouts: {upstream: soon}\nsinks: [{type: file}]\nbogus: 1\n"
        "rules: [{id: r, when: {path: '^/'}, threshold: 0, window: 1m}]\n"
    )
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    for key in ("listen", "timeouts.upstream", "sinks[0].path", "bogus", "rules[0].threshold"):
        assert f"invalid configuration: {key}" in err, (key, err)
    assert main(["check", "--json", str(path)]) == 2
    verdict = orjson.loads(capsys.readouterr().out)
    assert not verdict["ok"] and len(verdict["errors"]) == 5
    assert {"path", "message"} == set(verdict["errors"][0])
    good = tmp_path / "good.yaml"
    sink = f"sinks: [{{type: file, path: {tmp_path / 'a.jsonl'}}}]"
    good.write_text(f"upstream: http://127.0.0.1:3000\nstate_dir: {tmp_path / 'state'}\n{sink}\n")
    assert main(["check", "--json", str(good)]) == 0
    assert orjson.loads(capsys.readouterr().out)["ok"] is True


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _log(tmp_path: Path, lines: int) -> Path:
    path = tmp_path / "access.log"
    path.write_text(
        "".join(
            f"198.51.100.{i % 200} - - [10/Oct/2000:13:{i // 60 % 60:02d}:{i % 60:02d} +0000] "
            f'"GET /p{i} HTTP/1.1" 404 12 "-" "curl/8.5.0"\n'
            for i in range(lines)
        )
    )
    return path


def test_replay_draws_progress_on_a_terminal_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a terminal, replay draws a reading counter and a replay bar on stderr ending at
    100 %; when stderr is not a terminal it writes nothing there; stdout is the same."""
    log = _log(tmp_path, 3000)
    pack = ROOT / "configs" / "rules" / "default.yaml"
    assert main(["replay", str(log), "--rules", str(pack)]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["replay", str(log), "--rules", str(pack)]) == 0
    drawn = terminal.getvalue()
    assert f"reading {log} 3,000 lines" in drawn
    assert "replaying [" + "#" * 30 + "] 100.0% 3,000/3,000" in drawn
    assert capsys.readouterr().out == quiet.out
