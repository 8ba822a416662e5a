"""End to end: every line a real proxylog writes, on both schemas, conforms to ECS."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxylog.record import Schema
from tests._ecs import assert_ecs, flat
from tests._http import request
from tests.conftest import free_port

RULES = [
    {
        "id": "probe",
        "when": {"path": "^/[a-z0-9]+/secret"},
        "threshold": 2,
        "window": "60s",
        "action": "block",
        "ban": "1h",
    },
]


def _ctl(socket_path: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "proxylog.cli", "ctl", "--socket", str(socket_path), *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def _malformed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        conn.recv(4096)


@pytest.mark.parametrize("schema", ["nested", "flat"])
def test_every_line_of_a_live_stream_is_ecs(start_proxylog, tmp_path: Path, schema: Schema) -> None:
    """Access records (allowed, blocked, banned, invalid), audits, bans, unbans, alerts and the
    integrity chain's seals, as a chained file sink writes them, are all ECS."""
    key = tmp_path / "chain.key"
    key.write_bytes(b"k" * 32)
    chained = tmp_path / "chained.jsonl"
    config: dict[str, Any] = {
        "rules": RULES,
        "mode": "enforce",
        "record": {"schema": schema, "headers": ["referer", "content-type", "x-trace"]},
        "sinks": [{"type": "file", "path": str(chained), "integrity": {"key_file": str(key)}}],
        "alerts": [{"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/", "cooldown": "0s"}],
    }
    proxy = start_proxylog(config)
    prefix = "/" + uuid.uuid4().hex[:12]
    request(proxy.url, f"{prefix}/ok?q=1", headers=[("Referer", "https://r.example/"), ("X-Trace", "t")])
    assert [request(proxy.url, f"{prefix}/secret").status for _ in range(3)] == [200, 403, 403]
    assert request(proxy.url, f"{prefix}/banned").status == 403  # matches no rule: the ban refuses it
    _malformed(proxy.port)
    _ctl(proxy.control_socket, "unban", "127.0.0.1")
    _ctl(proxy.control_socket, "ban", "192.0.2.0/24", "--ttl", "1m", "--reason", "noisy")
    _ctl(proxy.control_socket, "mode", "monitor")
    assert proxy.stop() == 0
    docs = [orjson.loads(line) for line in chained.read_bytes().splitlines()]
    for doc in docs:
        assert_ecs(doc)
        if schema == "flat":
            assert not any(isinstance(value, dict) for value in doc.values()), doc
    events = [flat(doc) for doc in docs]
    actions = {event["event.action"] for event in events}
    expected = {"integrity_chain_start", "integrity_chain_end", "allowed", "blocked", "ban", "unban"}
    assert expected | {"audit.mode", "audit.ban", "audit.unban", "alert"} <= actions
    assert any(event.get("error.type") == "request_invalid" for event in events)
    [ban] = [e for e in events if e["event.action"] == "ban" and e.get("client.ip") == "127.0.0.1"]
    assert ban["rule.id"] == "probe" and ban["event.category"] == ["intrusion_detection", "network"]
    # A request the ban refuses names the rule that banned, though it matched no rule itself.
    [refused] = [e for e in events if e.get("url.path") == f"{prefix}/banned"]
    assert refused["event.action"] == "blocked" and refused["http.response.status_code"] == 403
    assert [refused[f"rule.{field}"] for field in ("id", "name", "ruleset")] == ["probe", "probe", "proxylog"]
    assert all(e["proxylog.schema_version"] == 2 and "proxylog.integrity.mac" in e for e in events)
    result = subprocess.run(
        [sys.executable, "-m", "proxylog.cli", "verify", str(chained), "--key-file", str(key)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
