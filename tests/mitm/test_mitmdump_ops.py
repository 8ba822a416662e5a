"""Under stock mitmdump the addon has what `proxylog serve` has around it: the control socket,
metrics, saved state and SIGHUP, and its notices stay off stdout (the stdout sink's)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import yaml

from tests._http import request
from tests.conftest import Puma, free_port, wait_for_port
from tests.mitm._mitmdump import start_mitmdump


def _ctl(socket_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "proxylog.cli", "ctl", "--socket", str(socket_path), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_mitmdump_has_control_metrics_state_and_sighup(tmp_path: Path, puma: Puma) -> None:
    """ctl answers (status, ban), /metrics is served, the ban is saved to state.json, SIGHUP
    reloads (an audit.reload record), and stdout carries only records."""
    state, metrics_port, port = tmp_path / "state", free_port(), free_port()
    config = tmp_path / "proxylog.yaml"
    settings = {"state_dir": str(state), "metrics": {"listen": f"127.0.0.1:{metrics_port}"}}
    config.write_text(yaml.safe_dump(settings))
    proc = start_mitmdump(tmp_path, puma.url, config, port, subprocess.PIPE)
    try:
        wait_for_port(port)
        wait_for_port(metrics_port)
        socket_path = state / "control.sock"
        status = json.loads(_ctl(socket_path, "--json", "status").stdout)
        assert status["ok"] and status["engine"] == "mitmdump" and status["config"] == str(config)
        assert request(f"http://127.0.0.1:{port}", "/via-mitmdump").status == 200
        scraped = request(f"http://127.0.0.1:{metrics_port}", "/metrics").body.decode()
        assert "proxylog_requests_total" in scraped
        assert _ctl(socket_path, "ban", "192.0.2.5", "--ttl", "1h").returncode == 0
        saved = json.loads((state / "state.json").read_text())
        assert [ban["key"] for ban in saved["bans"]] == ["192.0.2.5"]
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while json.loads(_ctl(socket_path, "--json", "stats").stdout)["reloads"]["ok"] < 1:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    docs = [orjson.loads(line) for line in stdout.splitlines()]  # nothing but JSON on stdout
    actions = [doc["event"]["action"] for doc in docs]
    assert "allowed" in actions and "ban" in actions and "audit.reload" in actions
    assert b"proxylog: INFO: control socket" in stderr and b"Traceback" not in stderr
    assert not (state / "control.sock").exists()
