"""HTTP/1.1 semantics a front proxy must get right, on every engine: protocol upgrades
(WebSocket for ActionCable), Expect: 100-continue, bodyless responses, chunked bodies both
ways, and (fast plane) the keep-alive pool to Puma and its one retry."""

from __future__ import annotations

import base64
import os
import socket
from typing import Any

import orjson
import pytest

from tests.fast import _upstreams as scripted
from tests.fast._http import read_response


def _scripted(upstreams: list[scripted.Upstream], make: Any) -> scripted.Upstream:
    upstream = scripted.start(make)
    upstreams.append(upstream)
    return upstream


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def test_a_websocket_upgrade_is_tunnelled_byte_for_byte_with_one_record(start_proxylog, upstreams) -> None:
    """After the 101, frames pass both ways unchanged; when the tunnel closes there is one
    record: status 101, the bytes each way, the duration of the whole connection."""
    upstream = _scripted(upstreams, scripted.websocket_echo)
    proxy = start_proxylog({"upstream": f"http://127.0.0.1:{upstream.port}"})
    key = base64.b64encode(os.urandom(16))
    with _connect(proxy.port) as sock:
        sock.sendall(
            b"GET /cable HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        reader = sock.makefile("rb")
        head = read_response(reader, head_only=True)
        assert head.status == 101
        sent = scripted.frame(0x1, b"hello cable", mask=True)
        sock.sendall(sent)
        assert reader.read(2 + len(b"hello cable")) == scripted.frame(0x1, b"hello cable", mask=False)
        closing = scripted.frame(0x8, b"\x03\xe8", mask=True)
        sock.sendall(closing)
        assert reader.read(4) == scripted.frame(0x8, b"\x03\xe8", mask=False)
        reader.close()
    [record] = proxy.access(count=1)
    assert record["http"]["response"]["status_code"] == 101
    assert record["http"]["request"]["body"]["bytes"] == len(sent) + len(closing)
    assert record["http"]["response"]["body"]["bytes"] == 2 + len(b"hello cable") + 4
    assert "error" not in record
    assert b"upgrade: websocket" in upstream.requests[0].lower()


def test_expect_100_continue_gets_one_interim_answer_then_the_response(start_proxylog) -> None:
    """A client waiting for 100 Continue gets it, sends its body, and Puma gets the body."""
    proxy = start_proxylog()
    with _connect(proxy.port) as sock:
        sock.sendall(
            b"POST /upload-expect HTTP/1.1\r\nHost: app\r\nContent-Length: 11\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"hello world")
        reader = sock.makefile("rb")
        response = read_response(reader)
        reader.close()
    assert response.status == 200
    seen = orjson.loads(response.body)
    assert seen["body_bytes"] == 11 and "HTTP_EXPECT" not in seen["headers"]
    [record] = proxy.access(count=1)
    assert record["http"]["request"]["body"]["bytes"] == 11


@pytest.mark.parametrize(
    ("request_line", "status"),
    [(b"HEAD /head-only", 200), (b"GET /status/204", 204), (b"GET /status/304", 304)],
    ids=["HEAD", "204", "304"],
)
def test_bodyless_responses_carry_no_body_and_keep_the_connection(
    start_proxylog, request_line: bytes, status: int
) -> None:
    """HEAD, 204 and 304 answers have no body; the next request on the connection is served."""
    proxy = start_proxylog()
    with _connect(proxy.port) as sock:
        sock.sendall(request_line + b" HTTP/1.1\r\nHost: app\r\n\r\n")
        reader = sock.makefile("rb")
        first = read_response(reader, head_only=True)
        sock.sendall(b"GET /after-bodyless HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        second = read_response(reader)
        reader.close()
    assert first.status == status and second.status == 200
    assert orjson.loads(second.body)["path"] == "/after-bodyless"
    records = proxy.access(count=2)
    assert [r["http"]["response"]["body"]["bytes"] for r in records] == [0, len(second.body)]


def test_a_chunked_upload_and_a_chunked_response_pass_through(start_proxylog) -> None:
    """A chunked request body reaches Puma whole; a chunked response reaches the client whole."""
    proxy = start_proxylog()
    with _connect(proxy.port) as sock:
        sock.sendall(
            b"POST /chunked-up HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"
            b"GET /chunked?mb=1 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
        )
        reader = sock.makefile("rb")
        upload = read_response(reader)
        download = read_response(reader)
        reader.close()
    assert orjson.loads(upload.body)["body_bytes"] == 9
    assert len(download.body) == 1024 * 1024
    records = {r["url"]["path"]: r for r in proxy.access(count=2)}
    assert records["/chunked-up"]["http"]["request"]["body"]["bytes"] == 9
    assert records["/chunked"]["http"]["response"]["body"]["bytes"] == 1024 * 1024


@pytest.mark.engines("fast")  # only the fast plane keeps a pool of connections to Puma
def test_the_pool_reuses_puma_connections_across_clients(start_proxylog, upstreams) -> None:
    """Ten clients one after another are served over one kept-alive connection to Puma."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    upstream = _scripted(upstreams, lambda ref: scripted.replying(ref, ok, then_close=False))
    proxy = start_proxylog({"upstream": f"http://127.0.0.1:{upstream.port}"})
    for n in range(10):
        with _connect(proxy.port) as sock:
            sock.sendall(b"GET /pooled/%d HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n" % n)
            reader = sock.makefile("rb")
            assert read_response(reader).body == b"ok"
            reader.close()
    assert len(upstream.requests) == 10
    assert upstream.connections == 1


@pytest.mark.engines("fast")  # only the fast plane reuses a Puma connection for another client
@pytest.mark.parametrize(("method", "status"), [(b"GET", 200), (b"POST", 502)])
def test_a_reused_connection_dropped_before_answering_is_retried_only_when_idempotent(
    start_proxylog, upstreams, method: bytes, status: int
) -> None:
    """Puma closing a pooled connection just as a request is written to it (its keep-alive
    timeout) is retried once on a fresh connection for GET; a POST is answered 502
    `upstream_reset`, as Puma may have acted on it."""
    upstream = _scripted(upstreams, scripted.drops_second)
    proxy = start_proxylog({"upstream": f"http://127.0.0.1:{upstream.port}"})
    for path in (b"/first", b"/second"):
        with _connect(proxy.port) as sock:
            body = b"" if method == b"GET" or path == b"/first" else b"x=1"
            verb = b"GET" if path == b"/first" else method
            sock.sendall(
                b"%s %s HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (verb, path, len(body), body)
            )
            reader = sock.makefile("rb")
            response = read_response(reader)
            reader.close()
    assert response.status == status
    [_, second] = proxy.access(count=2)
    if status == 502:
        assert second["error"]["type"] == "upstream_reset"
    else:
        assert response.body == b"first" and "error" not in second
