"""Slow and greedy clients on the fast plane, with the config keys that bound them:
`timeouts.body_rate`/`body_window` (a body must keep arriving), `timeouts.write` (a response
must be read) and `limits.connections_per_client`.

The fast plane only: these keys are not yet applied by the mitmproxy plane (the hardening
issue), which docs/engines.md says.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import Puma
from tests.fast._http import read_all

pytestmark = pytest.mark.engines("fast")


def _head(path: str, length: int) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()


def test_a_body_slower_than_body_rate_is_cut_with_408(start_proxylog, puma: Puma) -> None:
    """10 bytes every 0.2 s against 1,000 bytes/s over 1 s windows: 408, and the record says
    client_timeout and counts the bytes that did arrive."""
    proxy = start_proxylog({"timeouts": {"body_rate": 1000, "body_window": "1s"}})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
        sock.sendall(_head("/slow-body", 10_000))
        answer = b""
        for _ in range(20):  # 4 s: the default rate's 10 s window would not have ended
            try:
                sock.sendall(b"x" * 10)
            except OSError:
                break
            time.sleep(0.2)
            sock.setblocking(False)
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            if answer:
                break
        sock.settimeout(3)
        answer += read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    [record] = proxy.access(1)
    assert record["error"]["type"] == "client_timeout"
    assert record["http"]["request"]["body"]["bytes"] > 0


def test_a_client_over_connections_per_client_is_closed_at_once(start_proxylog, puma: Puma) -> None:
    """Two connections allowed per client: the third is closed without an answer, the first
    two are served."""
    proxy = start_proxylog({"limits": {"connections_per_client": 2}})
    kept = [socket.create_connection(("127.0.0.1", proxy.port), timeout=10) for _ in range(2)]
    time.sleep(0.2)  # both counted before the third arrives
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as third:
        try:
            third.sendall(b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n")
            refused = third.recv(65536)
        except ConnectionResetError:
            refused = b""
    assert refused == b""
    for i, sock in enumerate(kept):
        sock.sendall(f"GET /kept/{i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        assert read_all(sock).startswith(b"HTTP/1.1 200 ")
        sock.close()
    assert "/third" not in puma.seen("/third")


def test_a_client_that_leaves_its_response_unread_is_closed_after_write(start_proxylog, puma: Puma) -> None:
    """`timeouts.write: 1s`: a client reading nothing of a 64 MB response is cut, and the
    record says client_timeout."""
    proxy = start_proxylog({"timeouts": {"write": "1s"}})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /large?mb=64 HTTP/1.1\r\nHost: t\r\n\r\n")
        [record] = proxy.access(1, timeout=20)
    assert record["error"]["type"] == "client_timeout"
    assert "did not read its response" in record["error"]["message"]
