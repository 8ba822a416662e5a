"""Hostile requests in volume: every one answered and recorded, nothing left in flight, no
crash on stderr (the issue-12 trailer case: mitmproxy's handler used to crash on each)."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests._http import request
from tests.conftest import Puma, free_port, wait_for_port

pytestmark = pytest.mark.e2e

COUNT = 2000
TRAILER = (
    b"POST /trailer/%d HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-Checksum: %d\r\n\r\n"
)


def _send(port: int, index: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(TRAILER % (index, index))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _inflight(metrics_port: int) -> float:
    text = request(f"http://127.0.0.1:{metrics_port}", "/metrics").body.decode()
    [line] = [line for line in text.splitlines() if line.startswith("proxylog_inflight_requests ")]
    return float(line.split()[1])


def test_two_thousand_requests_with_trailers_each_get_an_answer_and_a_record(
    start_proxylog: Any, puma: Puma
) -> None:
    metrics_port = free_port()
    proxy = start_proxylog({"metrics": {"listen": f"127.0.0.1:{metrics_port}"}})
    wait_for_port(metrics_port)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: _send(proxy.port, i), range(COUNT)))
    assert [r[:13] for r in replies] == [b"HTTP/1.1 400 "] * COUNT
    records = proxy.access(count=COUNT, timeout=60)
    assert len(records) == COUNT
    assert {(r["error"]["type"], r["error"]["message"]) for r in records} == {
        ("request_invalid", "trailers are not supported")
    }
    assert sorted(r["url"]["path"] for r in records) == sorted(f"/trailer/{i}" for i in range(COUNT))
    deadline = time.monotonic() + 10
    while _inflight(metrics_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _inflight(metrics_port) == 0
    assert not [line for line in proxy.stderr_lines if "Traceback" in line or "crashed" in line]
    assert puma.seen("/trailer") == []
