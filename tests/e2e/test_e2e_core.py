"""End to end: a real proxylog in front of real Puma, a real client over loopback."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
import uuid

import orjson
import pytest

from tests._http import request
from tests._records import request_headers
from tests.conftest import Puma, free_port, records_for


def test_one_record_per_request_with_the_fields_that_matter(start_proxylog) -> None:
    """Each request yields exactly one ECS record carrying method, path, query, status, sizes."""
    proxy = start_proxylog()
    ok = request(
        proxy.url, "/hello?a=1", headers=[("User-Agent", "pytest-agent"), ("Referer", "https://r.example/")]
    )
    missing = request(proxy.url, "/status/404")
    posted = request(
        proxy.url, "/echo", method="POST", body=b"x" * 1234, headers=[("Content-Type", "text/plain")]
    )
    assert (ok.status, missing.status, posted.status) == (200, 404, 200)

    records = proxy.records(count=3)
    assert len(records) == 3
    first = records_for(records, ok.headers["X-Request-Id"])[0]
    assert first["http"]["request"]["method"] == "GET"
    assert first["url"] == {
        "path": "/hello",
        "query": "a=1",
        "original": "/hello?a=1",
        "domain": "127.0.0.1",
        "port": proxy.port,  # the Host the client sent names it
        "scheme": "http",
    }
    assert first["http"]["response"]["status_code"] == 200
    assert first["http"]["response"]["body"]["bytes"] == len(ok.body)
    assert request_headers(first) == {"referer": "https://r.example/"}
    assert first["user_agent"] == {"original": "pytest-agent"}
    assert first["client"]["ip"] == first["source"]["ip"] == "127.0.0.1"
    assert first["event"]["action"] == "allowed" and first["event"]["outcome"] == "success"
    assert first["proxylog"]["mode"] == "monitor"
    assert first["event"]["duration"] > 0
    assert first["@timestamp"].endswith("Z")

    assert records_for(records, missing.headers["X-Request-Id"])[0]["event"]["outcome"] == "failure"
    upload = records_for(records, posted.headers["X-Request-Id"])[0]
    assert upload["http"]["request"]["body"]["bytes"] == 1234
    assert posted.json()["body_bytes"] == 1234


SPOOFS = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X_Forwarded_For", "7.7.7.7"),
    ("x_forwarded_for", "8.8.8.8"),
    ("Client-IP", "9.9.9.9"),
    ("Client_IP", "9.9.9.8"),
    ("X-Real-IP", "5.5.5.5"),
    ("Forwarded", "for=4.4.4.4"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Host", "evil.example"),
    ("X_Forwarded_Host", "evil2.example"),
    ("X-Proxylog-Tags", "trusted-by-proxylog"),
    ("X_Proxylog_Tags", "trusted-by-proxylog"),
]


def test_spoofed_forwarding_headers_never_reach_puma(start_proxylog) -> None:
    """Puma sees XFF rewritten to the true peer; spoofing headers (underscore variants too) are stripped."""
    proxy = start_proxylog()
    resp = request(proxy.url, "/whoami", headers=[*SPOOFS, ("Host", "app.example.com")])
    seen = resp.json()
    assert seen["headers"]["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert seen["headers"]["HTTP_X_FORWARDED_PROTO"] == "http"
    assert seen["headers"]["HTTP_X_FORWARDED_HOST"] == "app.example.com"
    for env in (
        "HTTP_CLIENT_IP",
        "HTTP_X_REAL_IP",
        "HTTP_FORWARDED",
        "HTTP_X_FORWARDED_SSL",
        "HTTP_X_PROXYLOG_TAGS",
    ):
        assert env not in seen["headers"], env
    assert seen["remote_addr"] == "127.0.0.1"
    record = proxy.records(count=1)[0]
    assert record["client"]["ip"] == "127.0.0.1"


def test_trusted_proxy_chain_attributes_the_rightmost_untrusted_hop(start_proxylog) -> None:
    """Behind a trusted load balancer, client.ip is the rightmost untrusted X-Forwarded-For hop."""
    proxy = start_proxylog({"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]})
    resp = request(
        proxy.url,
        "/",
        headers=[("X-Forwarded-For", "6.6.6.6, 203.0.113.7, 10.1.2.3"), ("X-Forwarded-Proto", "https")],
    )
    seen = resp.json()["headers"]
    assert seen["HTTP_X_FORWARDED_FOR"] == "203.0.113.7, 10.1.2.3, 127.0.0.1"
    assert seen["HTTP_X_FORWARDED_PROTO"] == "https"
    record = proxy.records(count=1)[0]
    assert record["client"]["ip"] == "203.0.113.7"
    assert record["source"]["ip"] == "127.0.0.1"


def test_host_header_is_preserved(start_proxylog) -> None:
    """Puma receives the client's Host header, not the upstream address (Rails host authorization)."""
    proxy = start_proxylog()
    seen = request(proxy.url, "/", headers=[("Host", "shop.example.com:8443")]).json()
    assert seen["host"] == "shop.example.com:8443"
    assert proxy.records(count=1)[0]["url"]["domain"] == "shop.example.com"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("req-123_abc@def", True),
        ("token=S17", False),
        ("bad id with spaces", False),
        ("x" * 200, False),
        (None, False),
    ],
)
def test_request_id_round_trip(start_proxylog, sent: str | None, kept: bool) -> None:
    """A well-formed X-Request-Id reaches Puma and comes back; otherwise one is generated."""
    proxy = start_proxylog()
    resp = request(proxy.url, "/", headers=[("X-Request-Id", sent)] if sent else [])
    echoed = resp.headers["X-Request-Id"]
    assert resp.json()["headers"]["HTTP_X_REQUEST_ID"] == echoed
    assert (echoed == sent) is kept
    if not kept:
        assert uuid.UUID(echoed).version == 7
    assert proxy.records(count=1)[0]["http"]["request"]["id"] == echoed


def test_puma_down_gives_502_and_a_record(start_proxylog) -> None:
    """With nothing listening upstream the client gets proxylog's 502, and a record says why."""
    proxy = start_proxylog({"upstream": f"http://127.0.0.1:{free_port()}"})
    resp = request(proxy.url, "/anything")
    assert resp.status == 502
    assert b"mitmproxy" not in resp.body and "mitmproxy" not in str(resp.headers)
    record = proxy.records(count=1)[0]
    assert record["error"]["type"] == "upstream_connect"
    assert record["http"]["response"]["status_code"] == 502
    assert record["http"]["request"]["id"] == resp.headers["X-Request-Id"]


def test_slow_upstream_gives_504_and_a_record(start_proxylog) -> None:
    """An upstream slower than timeouts.upstream yields a 504 and an upstream_timeout record."""
    proxy = start_proxylog({"timeouts": {"upstream": "300ms"}})
    resp = request(proxy.url, "/slow?s=3")
    assert resp.status == 504
    record = proxy.records(count=1)[0]
    assert record["error"]["type"] == "upstream_timeout"
    assert record["http"]["response"]["status_code"] == 504
    assert request(proxy.url, "/after").status == 200, "the proxy keeps serving after a timeout"


def test_upstream_reset_before_headers_reach_the_client(start_proxylog) -> None:
    """A response Puma cuts short is an upstream_reset record. Its promised 100,000 bytes are
    over what the mitmproxy plane buffers (64 KiB), so on both planes the body is streamed
    (as nginx does): the client sees the head Puma sent and a truncated body."""
    proxy = start_proxylog()
    with pytest.raises(http.client.IncompleteRead):
        request(proxy.url, "/reset")
    [record] = proxy.access(count=1)
    assert record["http"]["response"]["status_code"] == 200
    assert record["error"]["type"] == "upstream_reset"


def test_upstream_reset_mid_stream(start_proxylog) -> None:
    """When headers were already streamed, the client sees a truncated 200 and the record says reset."""
    proxy = start_proxylog({"limits": {"stream_threshold": "1k"}})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /reset HTTP/1.1\r\nHost: app\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    record = proxy.records(count=1)[0]
    assert record["error"]["type"] == "upstream_reset"
    assert record["http"]["response"]["status_code"] == 200
    assert record["http"]["response"]["body"]["bytes"] == 10


def test_client_abort_is_recorded(start_proxylog) -> None:
    """A client that aborts (a reset, not a half-close) while Puma is still working still
    gets its record."""
    proxy = start_proxylog()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /slow?s=1 HTTP/1.1\r\nHost: app\r\n\r\n")
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    record = proxy.records(count=1)[0]
    assert record["error"]["type"] == "client_disconnect"
    assert "response" not in record["http"]


def test_large_response_is_streamed_with_bounded_memory(start_proxylog) -> None:
    """A 50 MiB response passes through while proxylog's peak RSS grows far less than 50 MiB."""
    proxy = start_proxylog()
    request(proxy.url, "/warmup")
    before = proxy.rss_kib("VmHWM")
    resp = request(proxy.url, "/large?mb=50")
    assert len(resp.body) == 50 * 1024 * 1024
    growth_mib = (proxy.rss_kib("VmHWM") - before) / 1024
    assert growth_mib < 20, f"peak RSS grew {growth_mib:.1f} MiB while streaming 50 MiB"
    record = records_for(proxy.records(count=2), resp.headers["X-Request-Id"])[0]
    assert record["http"]["response"]["body"]["bytes"] == 50 * 1024 * 1024


def test_chunked_response_is_streamed_and_counted(start_proxylog) -> None:
    """A chunked response of unknown length is streamed (not buffered) and its bytes counted."""
    proxy = start_proxylog()
    resp = request(proxy.url, "/chunked?mb=3")
    assert len(resp.body) == 3 * 1024 * 1024
    record = proxy.records(count=1)[0]
    assert record["http"]["response"]["body"]["bytes"] == 3 * 1024 * 1024


def test_sigterm_lets_an_in_flight_request_finish_and_flushes_its_record(start_proxylog) -> None:
    """SIGTERM during a slow request: the request completes, its record is written, exit code 0."""
    proxy = start_proxylog()
    result: dict[str, int] = {}
    slow = threading.Thread(
        target=lambda: result.setdefault("status", request(proxy.url, "/slow?s=1.5").status)
    )
    slow.start()
    time.sleep(0.5)
    assert proxy.stop(signal.SIGTERM) == 0
    slow.join(10)
    assert result["status"] == 200
    records = proxy.records()
    assert [r["url"]["path"] for r in records] == ["/slow"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()


def test_tls_client_hello_on_plain_listener_is_refused(start_proxylog) -> None:
    """A TLS ClientHello on the plain-HTTP listener gets a handshake_failure alert, no certificate."""
    import ssl

    proxy = start_proxylog()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw,
        pytest.raises(ssl.SSLError) as err,
    ):
        context.wrap_socket(raw, server_hostname="app.example.com")
    assert "HANDSHAKE_FAILURE" in str(err.value).upper()
    assert request(proxy.url, "/").status == 200
    assert not (proxy.config_path.parent / "state" / "mitmproxy").exists(), "no CA is written"


def test_hostile_bytes_never_reach_a_sink_raw(start_proxylog) -> None:
    """Control bytes and invalid UTF-8 in the request line and headers are escaped in the record."""
    proxy = start_proxylog({"record": {"headers": ["referer"]}})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            b"GET /a%00b/\xff\xfe?q=\x1b[31mred HTTP/1.1\r\nHost: app\r\n"
            b"User-Agent: evil\x1b[2J\x7f\xc2\x85agent\r\nReferer: \xe2\x80\xaeoops\r\n\r\n"
        )
        sock.recv(65536)
    proxy.records(count=1)
    raw = proxy.records_path.read_bytes()
    body = raw.rstrip(b"\n")
    assert b"\n" not in body and all(byte >= 0x20 for byte in body)
    assert b"\x7f" not in raw and "\u202e".encode() not in raw and "\x85".encode() not in raw
    record = orjson.loads(raw)
    assert record["url"]["path"] == "/a%00b/\\xff\\xfe"
    assert record["user_agent"]["original"] == "evil\\u001b[2J\\u007f\\u0085agent"


def test_duplicate_host_headers_are_refused(start_proxylog) -> None:
    """Two Host headers (a request-smuggling and cache-poisoning vector) get a 400 and never reach Puma."""
    proxy = start_proxylog()
    resp = request(proxy.url, "/dup", headers=[("Host", "app.example.com"), ("Host", "evil.example")])
    assert resp.status == 400
    record = proxy.records(count=1)[0]
    assert record["error"]["type"] == "request_invalid"
    assert record["http"]["response"]["status_code"] == 400
    assert "upstream" not in record["proxylog"]


def test_file_sink_is_created_0640(start_proxylog) -> None:
    """The file sink creates its file with mode 0640."""
    proxy = start_proxylog()
    request(proxy.url, "/")
    proxy.records(count=1)
    assert stat.S_IMODE(os.stat(proxy.records_path).st_mode) == 0o640


def test_stdout_sink_writes_ndjson(start_proxylog) -> None:
    """With a stdout sink, each record is one JSON line on proxylog's standard output."""
    proxy = start_proxylog({"sinks": [{"type": "stdout"}]}, stdout=subprocess.PIPE)
    request(proxy.url, "/one")
    request(proxy.url, "/two")
    assert proxy.stop() == 0
    lines = proxy.proc.stdout.read().splitlines()
    assert [orjson.loads(line)["url"]["path"] for line in lines] == ["/one", "/two"]


def test_broken_stdout_pipe_degrades_only_that_sink(start_proxylog) -> None:
    """When the stdout reader goes away, requests still succeed and the file sink keeps every record."""
    config = {"sinks": [{"type": "stdout"}, {"type": "file", "path": "access.jsonl"}]}
    proxy = start_proxylog(config, stdout=subprocess.PIPE)
    proxy.records_path = proxy.config_path.parent / "access.jsonl"
    proxy.proc.stdout.close()
    statuses = [request(proxy.url, f"/n{i}").status for i in range(20)]
    assert statuses == [200] * 20
    assert len(proxy.records(count=20)) == 20
    assert proxy.stop() == 0
    assert any("broken pipe" in line for line in proxy.stderr_lines)


def test_stalled_stdout_reader_never_blocks_requests(start_proxylog) -> None:
    """A stdout reader that never reads fills the pipe; requests keep flowing (drops are counted)."""
    config = {"sinks": [{"type": "stdout", "queue": 100}, {"type": "file", "path": "access.jsonl"}]}
    proxy = start_proxylog(config, stdout=subprocess.PIPE)  # nobody reads the pipe
    proxy.records_path = proxy.config_path.parent / "access.jsonl"
    padding = "p" * 3000  # ~3 KiB records fill a 64 KiB pipe quickly
    statuses = [request(proxy.url, f"/{padding}?i={i}", timeout=10).status for i in range(200)]
    assert statuses == [200] * 200
    assert len(proxy.records(count=200)) == 200
    proxy.kill()


def test_puma_restart_is_survived(tmp_path, start_proxylog) -> None:
    """Puma going away and coming back: 502s while down, 200s again after, a record for each."""
    upstream = Puma()
    proxy = start_proxylog({"upstream": upstream.url})
    assert request(proxy.url, "/").status == 200
    upstream.stop()
    assert request(proxy.url, "/").status == 502
    upstream = Puma(upstream.port)
    try:
        assert request(proxy.url, "/").status == 200
    finally:
        upstream.stop()
    assert [r["http"]["response"]["status_code"] for r in proxy.records(count=3)] == [200, 502, 200]


def _trickle_until_closed(sock: socket.socket, data: bytes, limit_s: float = 20.0) -> bool:
    """Send `data` a byte every 200 ms; True if the proxy closed the connection meanwhile."""
    deadline = time.monotonic() + limit_s
    for byte in data:
        if time.monotonic() > deadline:
            return False
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return True
        sock.settimeout(0.2)
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_slowloris_headers_are_cut_off(start_proxylog) -> None:
    """A client trickling header bytes is disconnected after timeouts.header, on a new connection and
    between keep-alive requests, while other clients are served."""
    proxy = start_proxylog({"timeouts": {"header": "1s"}})
    slow_head = b"GET /slow HTTP/1.1\r\nHost: app\r\n" + b"X-Pad: " + b"a" * 200
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        assert _trickle_until_closed(sock, slow_head)
    assert request(proxy.url, "/fine").status == 200
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: app\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert _trickle_until_closed(sock, slow_head)
    assert [r["url"]["path"] for r in proxy.records(count=2)] == ["/fine", "/first"]
