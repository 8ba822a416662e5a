"""The same addon under stock mitmdump (`mitmdump -s addons/proxylog_addon.py`), in front of real Puma."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import orjson
import yaml

from tests._http import request
from tests.conftest import Puma, free_port, wait_for_port
from tests.mitm._mitmdump import start_mitmdump


def test_addon_under_mitmdump_writes_records(tmp_path: Path, puma: Puma) -> None:
    """mitmdump -s loads the addon; requests get records and stripped spoofing headers."""
    records = tmp_path / "access.jsonl"
    config = tmp_path / "proxylog.yaml"
    config.write_text(yaml.safe_dump({"sinks": [{"type": "file", "path": str(records)}]}))
    port = free_port()
    proc = start_mitmdump(tmp_path, puma.url, config, port, subprocess.DEVNULL)
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}"
        seen = request(url, "/via-mitmdump", headers=[("X_Forwarded_For", "6.6.6.6")]).json()
        assert seen["headers"]["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
        assert request(url, "/status/500").status == 500
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    docs = [orjson.loads(line) for line in records.read_bytes().splitlines()]
    assert [d["url"]["path"] for d in docs] == ["/via-mitmdump", "/status/500"]
    assert docs[1]["http"]["response"]["status_code"] == 500
    assert b"Traceback" not in stderr
