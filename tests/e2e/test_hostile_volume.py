"""Hostile requests in volume: every one answered and recorded, nothing left in flight, no
crash on stderr, memory bounded and given back (the trailer case: mitmproxy's handler used to
crash on each; 200 concurrent 1 MB heads cost the mitmproxy plane 50-66 MiB; 200 connections
pipelining past the bound lost records to a write after EOF)."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests._hostile import head_shapes, run_clients, status_line, until_closed
from tests._http import request
from tests.conftest import Puma, free_port, wait_for_port

pytestmark = pytest.mark.e2e

COUNT = 2000
WARM = 200  # requests before the RSS baseline: the refusal path is loaded, caches filled
SETTLED_KIB = 8 * 1024  # a leak of about 12 KiB per request (the crash's) would pass it
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


def _settled_rss_kib(proxy: Any, below: int = 0, within: float = 8.0) -> int:
    """The proxy's RSS once refused connections have lingered out (2 s) and the upkeep has
    given freed memory back (each second): after `within` s, or as soon as it is `below`."""
    time.sleep(2.5)
    deadline = time.monotonic() + within
    while (rss := proxy.rss_kib()) > below and time.monotonic() < deadline:
        time.sleep(0.2)
    return rss


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
        replies = list(pool.map(lambda i: _send(proxy.port, i), range(WARM)))
        before = _settled_rss_kib(proxy)
        replies += pool.map(lambda i: _send(proxy.port, i), range(WARM, COUNT))
    assert [r[:13] for r in replies] == [b"HTTP/1.1 400 "] * COUNT
    growth_mib = (_settled_rss_kib(proxy, below=before + SETTLED_KIB) - before) / 1024
    assert growth_mib * 1024 <= SETTLED_KIB, f"RSS grew {growth_mib:.1f} MiB over {COUNT - WARM} refusals"
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


HEAD_SIZE = 1_000_000
HEAD_CLIENTS = 200
# 200 heads of the 64 KiB limit are 12.5 MiB of what the bound allows, and a connection costs
# about 20 KiB more; before the bounded reads the mitmproxy plane's peak grew 51-66 MiB.
HEAD_PEAK_KIB = 24 * 1024
HEAD_AFTER_KIB = 10 * 1024


@pytest.mark.parametrize("shape", ["value", "many", "url", "name", "empty", "noend"])
def test_two_hundred_concurrent_one_megabyte_heads_are_refused_in_bounded_memory(
    start_proxylog: Any, puma: Puma, shape: str
) -> None:
    """Each of 200 clients sends a 1 MB head as fast as the proxy reads it: all get 431, the
    proxy's peak RSS (the kernel's high-water mark) grows by about the 200 bounded heads, and
    the memory goes back once they have lingered out."""
    proxy = start_proxylog({"limits": {"header_bytes": 65536}})
    head = head_shapes(HEAD_SIZE)[shape]
    run_clients(proxy.port, head, 5, status_line)  # warm up the refusal path
    before = _settled_rss_kib(proxy, within=0)
    Path(f"/proc/{proxy.proc.pid}/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
    outcomes = [outcome for outcome, _ in run_clients(proxy.port, head, HEAD_CLIENTS, status_line)]
    assert outcomes == ["431"] * HEAD_CLIENTS
    peak_kib = proxy.rss_kib("VmHWM") - before
    assert peak_kib <= HEAD_PEAK_KIB, f"peak RSS grew {peak_kib / 1024:.1f} MiB refusing 200 heads"
    after_kib = _settled_rss_kib(proxy, below=before + HEAD_AFTER_KIB) - before
    assert after_kib <= HEAD_AFTER_KIB, f"RSS still {after_kib / 1024:.1f} MiB up after the refusals"
    records = proxy.access(count=5 + HEAD_CLIENTS, timeout=30)
    assert {r["http"]["response"]["status_code"] for r in records} == {431}


PIPELINERS = 200
PIPELINED = 2048  # 2,048 GETs are about 80 KiB: past limits.header_bytes ahead of an answer


def test_two_hundred_clients_pipelining_past_the_bound_are_cut_once_with_every_record(
    start_proxylog: Any, puma: Puma, engine: str
) -> None:
    """200 connections each send 2,048 pipelined GETs at once: each gets the responses the
    proxy answered before the client was cut, then one 400 and the close, nothing after it
    (on the fast plane, when the cut request's response had begun, that response is cut
    short instead: no 400 can follow it); every response sent has its record, each
    connection has one record saying why it was cut, nothing is left in flight, and no
    write after EOF or internal error reaches stderr."""
    metrics_port = free_port()
    proxy = start_proxylog({"metrics": {"listen": f"127.0.0.1:{metrics_port}"}})
    wait_for_port(metrics_port)
    data = b"".join(b"GET /pipelined/%d HTTP/1.1\r\nHost: app\r\n\r\n" % i for i in range(PIPELINED))
    assert len(data) > 65536
    replies = [reply for reply, _ in run_clients(proxy.port, data, PIPELINERS, until_closed, timeout=60)]
    responses, refused = 0, 0
    for reply in replies:
        assert isinstance(reply, bytes), reply
        statuses = [line[9:12] for line in reply.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
        assert statuses.count(b"400") <= 1 and b"400" not in statuses[:-1], statuses[-3:]
        assert statuses[-1:] == [b"400"] or engine == "fast", statuses[-3:]
        responses += len(statuses)
        refused += statuses[-1:] == [b"400"]
    records = proxy.access(count=responses, timeout=60)
    deadline = time.monotonic() + 10
    while _inflight(metrics_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _inflight(metrics_port) == 0
    records = proxy.access()  # a reset can lose a response the record counts: never fewer
    assert len(records) >= responses
    cut = [
        r
        for r in records
        if r.get("error", {}).get("message") == f"the client sent over {65536} bytes ahead of its answer"
    ]
    assert len(cut) == PIPELINERS
    assert {r["error"]["type"] for r in cut} == {"request_invalid"}
    assert sum(r["http"]["response"]["status_code"] == 400 for r in cut) >= refused
    assert not [
        line
        for line in proxy.stderr_lines
        if "internal error" in line or "Traceback" in line or "write_eof" in line
    ]
