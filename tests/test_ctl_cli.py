"""CLI rough edges: `proxylog ctl` usage errors exit 2 before anything is contacted, durations
compound, YAML syntax errors name the file."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from proxylog.cli import main
from proxylog.config import ConfigError, load_config, parse_duration
from proxylog.record import encode_record
from proxylog.sinks.file import FileSink
from proxylog.sinks.integrity import Chain
from proxylog.testing import make_record


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
