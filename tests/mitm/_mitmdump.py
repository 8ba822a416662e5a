"""Stock mitmdump running the proxylog addon in front of Puma, as a user starts it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT


def start_mitmdump(
    tmp_path: Path, upstream: str, config: Path, port: int, stdout: Any
) -> subprocess.Popen[bytes]:
    """`mitmdump -q -s addons/proxylog_addon.py` reverse-proxying `upstream` on `port`."""
    mitmdump = Path(sys.executable).with_name("mitmdump")
    return subprocess.Popen(
        [
            str(mitmdump),
            "-q",
            "-s",
            str(ROOT / "addons" / "proxylog_addon.py"),
            "--mode",
            f"reverse:{upstream}@127.0.0.1:{port}",
            "--set",
            f"proxylog_config={config}",
            "--set",
            f"confdir={tmp_path / 'mitm'}",
        ],
        stdout=stdout,
        stderr=subprocess.PIPE,
    )
