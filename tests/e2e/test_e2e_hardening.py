"""End to end hardening: head limits, protocol errors, shutdown, stalled stderr, record accuracy."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
import yaml

from tests._http import request
from tests.conftest import Puma, free_port, wait_for_port


def _exchange(port: int, data: bytes) -> bytes:
    """Send `data` (from a thread, so a proxy that answers early is read meanwhile) and return
    everything received until the proxy closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):  # the proxy refused and closed mid-send
                sock.sendall(data)

        sender = threading.Thread(target=send)
        sender.start()
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # closed with our unread bytes still queued: the reply came first
        sender.join(30)
    return received


def _read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return data


def _responses(raw: bytes) -> int:
    return raw.count(b"HTTP/1.1 ")


def test_oversized_request_head_is_refused_while_it_is_read(start_proxylog, puma: Puma) -> None:
    """5 MB of header lines get a 431 and a closed connection as soon as limits.header_bytes is
    passed: one request_invalid record, Puma never sees the request, memory stays bounded."""
    proxy = start_proxylog({"limits": {"header_bytes": "16k"}})
    request(proxy.url, "/warmup")
    before = proxy.rss_kib("VmHWM")
    head = b"GET /huge-head HTTP/1.1\r\nHost: app\r\n" + b"X-Pad: " + b"a" * 1000 + b"\r\n"
    raw = _exchange(proxy.port, head + b"X-More: b\r\n" * (5 * 1024 * 1024 // 11) + b"\r\n")
    assert raw.startswith(b"HTTP/1.1 431 ") and _responses(raw) == 1
    assert b"mitmproxy" not in raw
    growth_mib = (proxy.rss_kib("VmHWM") - before) / 1024
    assert growth_mib < 4, f"peak RSS grew {growth_mib:.1f} MiB reading a 5 MB head"
    records = proxy.access(count=2)
    refused = [r for r in records if r["url"]["path"] == "/huge-head"]
    assert len(refused) == 1
    assert refused[0]["error"]["type"] == "request_invalid"
    assert refused[0]["http"]["response"]["status_code"] == 431
    assert refused[0]["http"]["request"]["method"] == "GET"
    assert f"x-request-id: {refused[0]['http']['request']['id']}".encode() in raw
    assert puma.seen("/huge-head") == []
    assert request(proxy.url, "/after").status == 200


def test_empty_lines_before_a_head_count_toward_the_limit(start_proxylog, puma: Puma) -> None:
    """20000 empty lines then an endless line get a 431 once limits.header_bytes is passed,
    even with no header deadline: one record, and memory stays bounded while the client
    goes on sending 32 MiB (mitmproxy drops one empty line per read)."""
    proxy = start_proxylog({"limits": {"header_bytes": "4k"}, "timeouts": {"header": 0}})
    request(proxy.url, "/warmup")
    before = proxy.rss_kib("VmHWM")
    raw = _exchange(proxy.port, b"\r\n" * 20000 + b"A" * (32 * 1024 * 1024))
    assert raw.startswith(b"HTTP/1.1 431 ") and _responses(raw) == 1
    growth_mib = (proxy.rss_kib("VmHWM") - before) / 1024
    assert growth_mib < 64, f"peak RSS grew {growth_mib:.1f} MiB reading empty lines and a 32 MiB line"
    [refused] = [r for r in proxy.access(count=2) if r["url"]["path"] != "/warmup"]
    assert refused["error"]["type"] == "request_invalid"
    assert refused["http"]["response"]["status_code"] == 431
    assert request(proxy.url, "/after").status == 200


def test_a_refused_head_is_not_read_further_and_its_connection_is_closed(start_proxylog, puma: Puma) -> None:
    """1 MiB of empty lines before a request line, then 32 MiB more from a client that never
    closes, with no header deadline: the 431 and its record come once limits.header_bytes is
    passed, then nothing more is read and the proxy closes the connection itself (the client
    cannot send everything)."""
    proxy = start_proxylog({"limits": {"header_bytes": "64k"}, "timeouts": {"header": 0}})
    request(proxy.url, "/warmup")
    head = b"\r\n" * (512 * 1024) + b"GET /after-empty-lines HTTP/1.1\r\nHost: app\r\n\r\n"
    data = head + b"A" * (32 << 20)
    sent_all = threading.Event()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):  # the proxy closed the connection mid-send
                sock.sendall(data)
                sent_all.set()

        sender = threading.Thread(target=send)
        sender.start()
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        sender.join(30)
    assert not sender.is_alive(), "the proxy never closed the connection"
    assert not sent_all.is_set(), "the proxy read the client's 33 MiB after refusing its head"
    assert received.startswith(b"HTTP/1.1 431 ") and _responses(received) == 1
    [refused] = [r for r in proxy.access(count=2) if r["url"]["path"] != "/warmup"]
    assert refused["error"]["type"] == "request_invalid"
    assert refused["error"]["message"] == "request head over 65536 bytes"
    assert refused["http"]["response"]["status_code"] == 431
    assert puma.seen("/after-empty-lines") == []


def test_a_few_empty_lines_before_a_request_are_ignored(start_proxylog, puma: Puma) -> None:
    """Empty lines before a request line within limits.header_bytes are skipped (RFC 9112
    §2.2) and the request reaches Puma."""
    proxy = start_proxylog({"limits": {"header_bytes": "4k"}})
    path = f"/after-blank-lines/{uuid.uuid4().hex[:8]}"
    head = b"GET %s HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n" % path.encode()
    reply = _exchange(proxy.port, b"\r\n\n\r\n" + head)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert puma.seen(path) == [path]


def test_head_just_under_the_limit_is_served(start_proxylog) -> None:
    """A request head under limits.header_bytes reaches Puma as usual."""
    proxy = start_proxylog({"limits": {"header_bytes": "16k"}})
    resp = request(proxy.url, "/big-but-fine", headers=[("X-Pad", "a" * 15000)])
    assert resp.status == 200


@pytest.mark.parametrize(
    ("name", "raw", "status", "error_type", "path"),
    [
        (
            "invalid header name",
            b"GET /badname HTTP/1.1\r\nHost: app\r\nBad Name: v\r\n\r\n",
            400,
            "request_invalid",
            "/badname",
        ),
        (
            "TE+CL",
            b"POST /tecl HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "request_invalid",
            "/tecl",
        ),
        (
            "CONNECT",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            400,
            "request_invalid",
            "",
        ),
        ("garbage request line", b"GARBAGE <script>\r\n\r\n", 400, "request_invalid", ""),
        (
            "body over limits.body_size",
            b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 2000000\r\n\r\n",
            413,
            "body_too_large",
            "/upload",
        ),
        (
            "HEAD over limits.body_size, with the client's X-Request-Id",
            b"HEAD /upload HTTP/1.1\r\nHost: app\r\nX-Request-Id: client-id-0001\r\n"
            b"Content-Length: 2000000\r\n\r\n",
            413,
            "body_too_large",
            "/upload",
        ),
    ],
)
def test_protocol_errors_get_one_short_proxylog_reply_and_one_record(
    start_proxylog, puma: Puma, name: str, raw: bytes, status: int, error_type: str, path: str
) -> None:
    """Malformed requests get exactly one response, proxylog's own (X-Request-Id, no mitmproxy
    page, no echo of the input), one record of a client error, and Puma sees nothing."""
    proxy = start_proxylog({"limits": {"body_size": "1m"}})
    reply = _exchange(proxy.port, raw)
    assert reply.startswith(b"HTTP/1.1 %d " % status), name
    assert _responses(reply) == 1
    assert b"mitmproxy" not in reply and b"<script>" not in reply and b"Bad Name" not in reply
    [record] = proxy.access(count=1)
    assert record["error"]["type"] == error_type
    assert record["http"]["response"]["status_code"] == status
    assert record["http"]["response"]["bytes"] == len(reply)
    assert record["url"]["path"] == path and record["url"]["scheme"] == "http"
    assert f"x-request-id: {record['http']['request']['id']}".encode() in reply
    assert puma.seen("/badname") == puma.seen("/tecl") == puma.seen("/upload") == []


def test_refused_request_heads_count_toward_status_rules(start_proxylog, puma: Puma) -> None:
    """Request heads refused before they become flows (a smuggling probe, an unparseable
    request line, an oversized head) are observed with the status sent: a rule counting
    distinct paths answered 400/431 bans the client."""
    rules = [
        {
            "id": "probes",
            "when": {"status": [400, 431]},
            "distinct": "path",
            "threshold": 3,
            "window": "60s",
            "action": "block",
            "ban": "60s",
        }
    ]
    proxy = start_proxylog({"rules": rules, "limits": {"header_bytes": "4k"}}, args=["--enforce"])
    probes = [
        b"POST /smuggle-a HTTP/1.1\r\nHost: app\r\nContent-Length: 5, 6\r\n\r\nhello",
        b"GARBAGE <script>\r\n\r\n",
        b"GET /smuggle-b HTTP/1.1\r\nHost: app\r\nX-Pad: " + b"a" * 8000 + b"\r\n\r\n",
    ]
    assert [_exchange(proxy.port, probe)[:13] for probe in probes] == [
        b"HTTP/1.1 400 ",
        b"HTTP/1.1 400 ",
        b"HTTP/1.1 431 ",
    ]
    assert request(proxy.url, "/smuggle-after").status == 403
    records = proxy.access(count=4)
    assert [r["url"]["path"] for r in records] == ["/smuggle-a", "", "/smuggle-b", "/smuggle-after"]
    assert [rule["id"] for rule in records[2]["proxylog"]["rules"]] == ["probes"]
    assert records[3]["event"]["action"] == "blocked"
    assert puma.seen("/smuggle") == []


def test_a_long_invalid_header_gets_a_short_reason(start_proxylog, engine: str) -> None:
    """A 40 KB invalid header name yields a short reply and the shared head check's short
    reason, never the client's bytes quoted back (mitmproxy's own parse errors quote them)."""
    proxy = start_proxylog({"record": {"max_field_bytes": 1024}})
    reply = _exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: app\r\n" + b"Bad Name" * 5000 + b": v\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ") and len(reply) < 512
    [record] = proxy.access(count=1)
    assert record["error"] == {"type": "request_invalid", "message": "invalid name in header 2"}
    assert "truncated" not in record["proxylog"]


def test_long_path_query_and_user_agent_are_capped_and_flagged(start_proxylog) -> None:
    """Strings over record.max_field_bytes are cut to it and named in proxylog.truncated."""
    proxy = start_proxylog({"record": {"max_field_bytes": 256}})
    resp = request(proxy.url, "/" + "p" * 600 + "?" + "q=" + "x" * 600, headers=[("User-Agent", "u" * 600)])
    assert resp.status == 200
    [record] = proxy.access(count=1)
    assert len(record["url"]["path"]) == len(record["url"]["query"]) == 256
    assert len(record["user_agent"]["original"]) == 256
    assert sorted(record["proxylog"]["truncated"]) == ["url.path", "url.query", "user_agent.original"]


def test_absolute_form_authority_becomes_the_host_puma_sees(start_proxylog) -> None:
    """An absolute-form request without Host reaches Puma with Host set from its authority, the
    same domain the record names (RFC 9112 §3.2.2: the authority wins over Host)."""
    proxy = start_proxylog()
    for raw in (
        b"GET http://shop.example/abs HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET http://shop.example/abs HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    ):
        reply = _exchange(proxy.port, raw)
        seen = orjson.loads(reply.split(b"\r\n\r\n", 1)[1])
        assert seen["host"] == "shop.example" and seen["path"] == "/abs"
        assert seen["headers"]["HTTP_X_FORWARDED_HOST"] == "shop.example"
    assert [r["url"]["domain"] for r in proxy.access(count=2)] == ["shop.example", "shop.example"]


def test_upstream_and_listen_flags_override_the_config_file(start_proxylog, puma: Puma) -> None:
    """--upstream and --listen win over the file's upstream and listen."""
    port = free_port()
    proxy = start_proxylog(
        {"upstream": f"http://127.0.0.1:{free_port()}", "listen": f"127.0.0.1:{free_port()}"},
        args=["--upstream", puma.url, "--listen", f"127.0.0.1:{port}"],
    )
    assert proxy.port == port
    assert request(proxy.url, "/flags").status == 200


def _wait_for_line(proxy, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in proxy.stderr_lines):
        assert time.monotonic() < deadline, f"no stderr line with {text!r}"
        time.sleep(0.02)


def _wait_until_seen(puma: Puma, path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not puma.seen(path):
        assert time.monotonic() < deadline, f"Puma never saw {path}"
        time.sleep(0.02)


def test_sigterm_drain_timeout_still_records_requests_in_flight(start_proxylog, puma: Puma) -> None:
    """A request outlasting timeouts.drain gets a `shutdown` record before the sinks close."""
    proxy = start_proxylog({"timeouts": {"drain": "200ms"}})
    path = f"/slow?s=20&drain={time.monotonic_ns()}"
    slow = threading.Thread(
        target=lambda: _exchange(proxy.port, b"GET %s HTTP/1.1\r\nHost: app\r\n\r\n" % path.encode())
    )
    slow.start()
    _wait_until_seen(puma, path)
    assert proxy.stop(signal.SIGTERM) == 0
    slow.join(30)
    [record] = proxy.access()
    assert record["url"]["path"] == "/slow"
    assert record["error"]["type"] == "shutdown"
    assert "response" not in record["http"]


# Loaded by the proxylog subprocess at startup (PYTHONPATH): the record of one abandoned
# request raises, as a proxylog bug would. No real input makes _record fail.
_FAILING_SHUTDOWN_RECORD = """
import proxylog.pipeline as pipeline

_real = pipeline.record_for


def record_for(ex, *args, **kwargs):
    if ex.error_type == "shutdown" and b"boom=" in ex.path:
        raise RuntimeError("injected record failure")
    return _real(ex, *args, **kwargs)


pipeline.record_for = record_for
"""


def test_a_failing_shutdown_record_neither_hangs_the_exit_nor_loses_the_others(
    start_proxylog, puma: Puma, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When recording one request abandoned at the drain timeout raises, the error is logged
    and counted, the other abandoned request is still recorded, and SIGTERM exits 0."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_FAILING_SHUTDOWN_RECORD)
    monkeypatch.setenv("PYTHONPATH", str(inject), prepend=os.pathsep)
    proxy = start_proxylog({"timeouts": {"drain": "200ms"}})
    tag = uuid.uuid4().hex[:8]  # unique per run; digits alone could look like a card number
    paths = [f"/slow?s=10&{name}={tag}" for name in ("boom", "kept")]
    slow = []
    for path in paths:  # in this order, so the failing record comes first
        slow.append(
            threading.Thread(
                target=_exchange, args=(proxy.port, b"GET %s HTTP/1.1\r\nHost: app\r\n\r\n" % path.encode())
            )
        )
        slow[-1].start()
        _wait_until_seen(puma, path)
    assert proxy.stop(signal.SIGTERM) == 0
    for thread in slow:
        thread.join(30)
    [record] = proxy.access()
    assert record["url"]["query"] == paths[1].partition("?")[2]
    assert record["error"]["type"] == "shutdown"
    assert any("injected record failure" in line for line in proxy.stderr_lines)


def _sigterm_while_busy(proxy, puma: Puma, kept: socket.socket) -> threading.Thread:
    """Serve one request on `kept` (left open, keep-alive), start a 3 s request on another
    connection, and send SIGTERM once Puma has it. Returns the slow request's thread."""
    kept.sendall(b"GET /first HTTP/1.1\r\nHost: app\r\n\r\n")
    assert _read_response(kept).startswith(b"HTTP/1.1 200")
    path = f"/slow?s=3&busy={time.monotonic_ns()}"
    slow = threading.Thread(
        target=lambda: _exchange(proxy.port, b"GET %s HTTP/1.1\r\nHost: app\r\n\r\n" % path.encode())
    )
    slow.start()
    _wait_until_seen(puma, path)
    proxy.proc.send_signal(signal.SIGTERM)
    return slow


def test_draining_closes_idle_keep_alive_connections(start_proxylog, puma: Puma) -> None:
    """On SIGTERM an idle keep-alive connection is closed, not left to start new work."""
    proxy = start_proxylog({"timeouts": {"drain": "20s"}})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as idle:
        slow = _sigterm_while_busy(proxy, puma, idle)
        assert idle.recv(65536) == b""
    slow.join(30)
    assert proxy.stop() == 0


def test_request_on_a_kept_alive_connection_during_drain_gets_503(
    start_proxylog, puma: Puma, engine: str
) -> None:
    """With no header deadline tracking idle connections, a request arriving during the drain
    never reaches Puma. mitmproxy answers it 503 with Connection: close, recorded as
    `shutdown`; the fast plane closes every idle keep-alive connection when the drain starts,
    so the late request finds its connection closed."""
    proxy = start_proxylog({"timeouts": {"drain": "20s", "header": 0}})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as conn:
        slow = _sigterm_while_busy(proxy, puma, conn)
        _wait_for_line(proxy, "draining in-flight requests")
        with contextlib.suppress(OSError):  # the fast plane may have closed it already
            conn.sendall(b"GET /late HTTP/1.1\r\nHost: app\r\n\r\n")
        reply = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := conn.recv(65536):
                reply += chunk
    slow.join(30)
    assert proxy.stop() == 0
    late = [r for r in proxy.access() if r["url"]["path"] == "/late"]
    if engine == "mitmproxy":
        assert reply.startswith(b"HTTP/1.1 503 ") and b"connection: close" in reply
        assert late[0]["error"]["type"] == "shutdown"
        assert late[0]["http"]["response"]["status_code"] == 503
    else:
        assert reply == b"" and late == []
    assert puma.seen("/late") == []


def _dropped_log_lines(metrics_port: int) -> float:
    text = request(f"http://127.0.0.1:{metrics_port}", "/metrics").body.decode()
    [line] = [line for line in text.splitlines() if line.startswith("proxylog_log_lines_dropped_total ")]
    return float(line.split()[1])


def test_sigterm_with_a_stalled_stderr_exits_cleanly(tmp_path: Path, puma: Puma) -> None:
    """With stderr a pipe nobody reads (full pipe, full log queue: lines are being dropped),
    SIGTERM still exits 0, and what stderr holds when finally read has no traceback."""
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "proxylog.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "upstream": puma.url,
                "listen": f"127.0.0.1:{port}",
                # mitmproxy logs several debug lines per request: enough to fill the pipe
                "engine": "mitmproxy",
                "state_dir": str(tmp_path / "state"),
                "sinks": [{"type": "file", "path": str(tmp_path / "access.jsonl")}],
                "log": {"level": "debug"},
                "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxylog.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None
        wait_for_port(port)
        wait_for_port(metrics_port)
        sent = 0
        # Lines are dropped only once the writer is stuck on the full pipe and the queue
        # behind it is full too: the state this test is about, whatever the pipe's size.
        while _dropped_log_lines(metrics_port) == 0:
            for _ in range(50):
                request(f"http://127.0.0.1:{port}", "/noise")
            sent += 50
            assert sent < 20000, "no stderr line dropped: the pipe or the log queue never filled"
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(60)
        except subprocess.TimeoutExpired:
            code = None  # stuck, e.g. writing a traceback to the full pipe: reading unsticks it
        output: list[bytes] = []
        reader = threading.Thread(target=lambda: output.append(proc.stderr.read()))  # type: ignore[union-attr]
        reader.start()
        if code is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            proc.kill()
        reader.join(30)
        stderr = b"".join(output)
        assert b"proxylog: listening on" in stderr  # the real stream, from its start
        assert b"Traceback" not in stderr, stderr.decode(errors="replace")[-4000:]
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_a_client_sending_ahead_of_its_answer_is_cut_off(start_proxylog, puma: Puma, engine: str) -> None:
    """While Puma is still answering, mitmproxy buffers whatever the client sends next: more
    than limits.header_bytes of it gets a 400 and the connection closed, instead of growing
    memory; the request's record says why, and nothing is written after the 400 (issue 17:
    a write after EOF in the error hook lost the record)."""
    proxy = start_proxylog({"limits": {"header_bytes": "16k"}})
    request(proxy.url, "/warmup")
    before = proxy.rss_kib("VmHWM")
    raw = _exchange(proxy.port, b"GET /slow?s=3 HTTP/1.1\r\nHost: app\r\n\r\n" + b"A" * (64 * 1024 * 1024))
    assert raw.startswith(b"HTTP/1.1 400 ") and _responses(raw) == 1
    growth_mib = (proxy.rss_kib("VmHWM") - before) / 1024
    assert growth_mib < 32, f"peak RSS grew {growth_mib:.1f} MiB buffering a pipelined flood"
    [record] = [r for r in proxy.access(count=2, timeout=30) if r["url"]["path"] == "/slow"]
    assert record["http"]["response"]["status_code"] == 400
    assert record["error"]["message"] == "the client sent over 16384 bytes ahead of its answer"
    assert record["error"]["type"] == "request_invalid"
    assert not [line for line in proxy.stderr_lines if "internal error" in line or "Traceback" in line]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"5\nhello\r\n0\r\n\r\n", "bare LF in chunk size line"),
        (b"0x5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
        (b"8000000000000000\r\nhello\r\n0\r\n\r\n", "chunk size too large"),
        (b"10000000000000005\r\nhello\r\n0\r\n\r\n", "chunk size too large"),
        (b"5;a=b\nc\r\nhello\r\n0\r\n\r\n", "bare LF in chunk size line"),
        (b"5;a=\x01\r\nhello\r\n0\r\n\r\n", "control byte in chunk extension"),
        (b"5\r\nhelloXY0\r\n\r\n", "chunk data not followed by CRLF"),
        (b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n", "trailers are not supported"),
    ],
    ids=[
        "bare-lf",
        "hex-prefix",
        "size-2^63",
        "size-2^64+5",
        "lf-in-extension",
        "control-in-extension",
        "no-crlf-after-data",
        "trailer",
    ],
)
def test_invalid_chunk_framing_gets_a_400_and_a_request_invalid_record(
    start_proxylog, engine: str, body: bytes, reason: str
) -> None:
    """Chunk framing another parser could read differently is refused with proxylog's 400
    (never a silent close labelled client_disconnect) and a request_invalid record (issue 17)."""
    proxy = start_proxylog({})
    head = b"POST /chunks HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
    reply = _exchange(proxy.port, head + body)
    assert reply.startswith(b"HTTP/1.1 400 ") and _responses(reply) == 1
    [record] = proxy.access(count=1)
    assert record["http"]["response"]["status_code"] == 400
    assert record["error"] == {"type": "request_invalid", "message": reason}
