"""`proxylog serve` as a process: its flags are validated like the config keys they
override, and signals before it listens neither kill it silently nor leave it running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import STARTUP_TIMEOUT, free_port


def _serve(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "state")}
    return subprocess.Popen(
        [sys.executable, "-m", "proxylog.cli", "serve", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )


@pytest.mark.parametrize(
    ("flag", "value", "fragment"),
    [
        ("--upstream", "127.0.0.1:3000", "http/https URL"),
        ("--upstream", "localhost:3000", "http/https URL"),
        ("--upstream", "ftp://127.0.0.1:3000", "http/https URL"),
        ("--listen", "8080", "HOST:PORT"),
        ("--listen", "127.0.0.1:99999", "HOST:PORT"),
    ],
)
def test_serve_flags_are_validated_like_their_config_keys(
    tmp_path: Path, flag: str, value: str, fragment: str
) -> None:
    """A bad --upstream or --listen fails at start with exit 2 naming the flag, and nothing
    (no TLS CA) is created in the state directory."""
    proc = _serve(tmp_path, flag, value)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert f"{flag}: " in stderr and fragment in stderr
    assert not (tmp_path / "state").exists()


def _holds_signals(pid: int) -> bool:
    """SIGHUP ignored and SIGTERM caught: serve's own code runs. (SIGHUP alone would not do:
    a test run under nohup starts every child with SIGHUP ignored.)"""
    masks = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("SigIgn:", "SigCgt:")):
            masks[line[:6]] = int(line.split()[1], 16)
    ignored, caught = masks.get("SigIgn", 0), masks.get("SigCgt", 0)
    return bool(ignored >> (signal.SIGHUP - 1) & 1 and caught >> (signal.SIGTERM - 1) & 1)


def _listening(port: int) -> bool:
    return f":{port:04X} 00000000:0000 0A" in Path("/proc/net/tcp").read_text()


def _start_and_wait_for_proxylog_code(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    """Start serve and return once its code runs (it holds its signals), before it listens.
    Python's own start-up (~50 ms) comes first: no Python program can act on a signal then."""
    proc = _serve(tmp_path, "--upstream", "http://127.0.0.1:1", "--listen", f"127.0.0.1:{port}")
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not _holds_signals(proc.pid):
        assert not _listening(port), "serve listened before it ever ignored SIGHUP"
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
        time.sleep(0.001)
    assert not _listening(port)
    return proc


def test_sighup_while_starting_does_not_kill_serve(tmp_path: Path) -> None:
    """SIGHUPs from serve's first moments until it listens (a logrotate or reload racing the
    start) are ignored: it comes up, listens, and still stops cleanly on SIGTERM."""
    port = free_port()
    proc = _start_and_wait_for_proxylog_code(tmp_path, port)
    try:
        sent = 0
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _listening(port):
            proc.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.01)
            assert proc.poll() is None, f"killed by SIGHUP #{sent}: {proc.communicate()[1]}"
            assert time.monotonic() < deadline
        assert sent > 1
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sigterm_while_starting_exits_zero(tmp_path: Path) -> None:
    """SIGTERM before serve listens exits 0 at once, without a traceback."""
    port = free_port()
    proc = _start_and_wait_for_proxylog_code(tmp_path, port)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert not _listening(port)
