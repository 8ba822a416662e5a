"""Edges of the hostile cases that need more than a request: an upstream answering with an
invalid status line, and a client that half-closes after a complete request."""

from __future__ import annotations

import socket

import pytest

from tests.fast import _upstreams as scripted
from tests.fast._http import read_all

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "status_line",
    [b"HTTP/1.1 abc OK", b"HTTP/1.1 99 Odd", b"HTTP/9.9 200 OK", b"GARBAGE"],
)
def test_an_invalid_upstream_status_line_is_typed_upstream_invalid(
    start_proxylog, upstreams, status_line: bytes
) -> None:
    """A response head no HTTP/1.1 origin may send gets the client a 502, typed upstream_invalid
    (not upstream_reset: Puma answered, wrongly), and is never passed on."""
    upstream = scripted.start(
        lambda ref: scripted.replying(ref, status_line + b"\r\nContent-Length: 2\r\n\r\nok")
    )
    upstreams.append(upstream)
    proxy = start_proxylog({"upstream": f"http://127.0.0.1:{upstream.port}"})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /bad-status HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 502 "), reply[:80]
    [record] = proxy.access(count=1)
    assert record["error"]["type"] == "upstream_invalid", record["error"]
    assert record["http"]["response"]["status_code"] == 502


@pytest.mark.engines("fast")  # mitmproxy's read loop ends alike on a FIN and on a reset, so
# its plane cannot answer a half-closed client without answering an aborted one: there a FIN
# after a request is a disconnect (docs/hardening.md)
def test_a_client_half_closing_after_a_complete_get_gets_its_response(start_proxylog) -> None:
    """A client may send its FIN once its request is complete (RFC 9112 §9.6) and still read
    the response."""
    proxy = start_proxylog()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /half-closed HTTP/1.1\r\nHost: app\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:80]
    [record] = proxy.access(count=1)
    assert "error" not in record, record["error"]
    assert record["http"]["response"]["status_code"] == 200
