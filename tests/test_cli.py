"""`proxylog serve` as a process: its flags are validated like the config keys they
override, and signals before it listens neither kill it silently nor leave it running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


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
