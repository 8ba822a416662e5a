"""Slow and greedy clients, with the config keys that bound them, on both engines:
`timeouts.body_rate`/`body_window` (a body must keep arriving), `timeouts.write` (a response
must be read), `limits.connections_per_client`, and a banned client's open connections
(blocked means closed)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable

import pytest

from tests.alerts.test_alerts_e2e import PROBES, RULES
from tests.conftest import Puma
from tests.fast._http import closed_by_peer, read_all, read_response
from tests.ops.test_control import ctl

SLOW = {"timeouts": {"body_rate": 1000, "body_window": "1s"}}
WRITE_TIMEOUT = {"timeouts": {"write": "1s"}}
# mitmproxy's header deadline also closes an idle keep-alive connection (timeouts.header after
# its last answer): longer than the tests wait, so only a ban can close it there.
BANS = {"mode": "enforce", "timeouts": {"header": "60s"}}
UNREAD = {"type": "client_timeout", "message": "the client did not read its response for 1 s"}


def _connect(port: int, timeout: float = 20) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def _wait_until(predicate: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.02)


def _get(sock: socket.socket, path: str) -> int:
    """One keep-alive GET on `sock`: the response's status, its body read whole."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return read_response(sock.makefile("rb")).status


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        ("Content-Length: 10000", b"x" * 100),
        ("Transfer-Encoding: chunked", b"64\r\n" + b"x" * 100 + b"\r\n"),
    ],
    ids=["content-length", "chunked"],
)
def test_a_body_slower_than_body_rate_is_cut_with_408(
    start_proxylog, puma: Puma, framing: str, body: bytes
) -> None:
    """100 body bytes, then nothing, against 1,000 bytes/s over 1 s windows: proxylog's 408
    with Connection: close once the window ends; one record says client_timeout and counts
    the 100 bytes that did arrive; Puma never gets the request (a streamed chunked body's
    upstream connection is closed with it)."""
    proxy = start_proxylog(SLOW)
    with _connect(proxy.port) as sock:
        path = f"/slow-body/{uuid.uuid4().hex}"  # Puma is shared: a path no other test sends
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n".encode() + body)
        answer = read_all(sock)
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"\r\nconnection: close" in head
    [record] = proxy.access(1)
    assert record["error"] == {"type": "client_timeout", "message": "request body slower than 1000 bytes/s"}
    assert record["http"]["response"]["status_code"] == 408
    assert record["http"]["request"]["body"]["bytes"] == 100
    assert puma.seen(path) == []


def test_a_body_at_body_rate_is_forwarded(start_proxylog, puma: Puma) -> None:
    """A body that keeps up with the rate (all of it at once here) is not cut."""
    proxy = start_proxylog(SLOW)
    with _connect(proxy.port) as sock:
        sock.sendall(b"POST /fast-body HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\n")
        sock.sendall(b"abc")
        assert read_all(sock).startswith(b"HTTP/1.1 200 ")
    [record] = proxy.access(1)
    assert "error" not in record


def test_a_client_over_connections_per_client_is_closed_at_once(start_proxylog, puma: Puma) -> None:
    """Two connections allowed per client: the third is closed without an answer, the first
    two are served."""
    proxy = start_proxylog({"limits": {"connections_per_client": 2}})
    kept = [_connect(proxy.port, 10) for _ in range(2)]
    for i, sock in enumerate(kept):  # each answered: both counted before the third arrives
        assert _get(sock, f"/kept/{i}") == 200
    path = f"/third/{uuid.uuid4().hex}"  # Puma is shared: a path no other test sends
    with _connect(proxy.port, 10) as third:
        try:
            third.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            refused = third.recv(65536)
        except ConnectionResetError:
            refused = b""
    assert refused == b""
    for i, sock in enumerate(kept):
        sock.sendall(f"GET /kept/{i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        assert read_all(sock).startswith(b"HTTP/1.1 200 ")
        sock.close()
    assert puma.seen(path) == []


def test_a_refused_connection_lingering_does_not_count(start_proxylog, puma: Puma) -> None:
    """One connection allowed: a connection whose request was refused (400, then held open
    so the client can read it) no longer counts, so the client's next connection is served."""
    proxy = start_proxylog({"limits": {"connections_per_client": 1}})
    with _connect(proxy.port, 10) as refused:
        refused.sendall(b"GET /bad HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n")
        assert refused.recv(65536).startswith(b"HTTP/1.1 400 ")
        with _connect(proxy.port, 10) as sock:  # while the refused one is still open
            sock.sendall(b"GET /next HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert read_all(sock).startswith(b"HTTP/1.1 200 ")


def test_a_trusted_proxy_is_exempt_from_connections_per_client(start_proxylog, puma: Puma) -> None:
    proxy = start_proxylog({"limits": {"connections_per_client": 1}, "trusted_proxies": ["127.0.0.1/32"]})
    socks = [_connect(proxy.port, 10) for _ in range(3)]
    for i, sock in enumerate(socks):
        sock.sendall(f"GET /via-proxy/{i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        assert read_all(sock).startswith(b"HTTP/1.1 200 ")
        sock.close()


def test_a_client_that_leaves_its_response_unread_is_closed_after_write(start_proxylog, puma: Puma) -> None:
    """`timeouts.write: 1s`: a client reading nothing of a 64 MiB response is cut, the
    record says client_timeout, and what the client can still read is cut short, then the
    connection is closed."""
    proxy = start_proxylog(WRITE_TIMEOUT)
    with _connect(proxy.port, 30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /large?mb=64 HTTP/1.1\r\nHost: t\r\n\r\n")
        [record] = proxy.access(1, timeout=20)
        received = len(read_all(sock))
    assert record["error"] == UNREAD
    assert record["http"]["response"]["status_code"] == 200
    assert received < 64 * 1024 * 1024


def test_pipelined_responses_left_unread_are_cut_after_write(start_proxylog, puma: Puma) -> None:
    """Eight pipelined GETs of 1 MiB (under `stream_threshold`), none read: the response
    the proxy is writing when the client's buffers are full is recorded client_timeout and
    the connection is closed; the requests after it never reach a record."""
    proxy = start_proxylog(WRITE_TIMEOUT)
    with _connect(proxy.port, 30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /large?mb=1 HTTP/1.1\r\nHost: t\r\n\r\n" * 8)
        _wait_until(lambda: any("error" in r for r in proxy.access()), timeout=20)
        received = len(read_all(sock))
    records = proxy.access()
    *served, cut = records
    assert all("error" not in r for r in served) and len(records) < 8
    assert cut["error"] == UNREAD
    assert received < 8 * 1024 * 1024


def test_a_banned_clients_other_connections_are_closed(start_proxylog, puma: Puma) -> None:
    """Blocked means closed: once `ctl ban` bans the client (enforce mode), its idle
    keep-alive connection is closed by the proxy, and the one whose request is in flight
    gets that response (with Connection: close), then is closed too."""
    proxy = start_proxylog(BANS)
    with _connect(proxy.port) as idle, _connect(proxy.port) as busy:
        assert _get(idle, "/before") == 200
        busy.sendall(b"GET /slow?s=2 HTTP/1.1\r\nHost: t\r\n\r\n")
        _wait_until(lambda: puma.seen("/slow?s=2"))
        assert ctl(proxy, "ban", "127.0.0.1", "--ttl", "1m").returncode == 0
        assert closed_by_peer(idle)
        answer = read_all(busy)
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nconnection: close" in head
    with _connect(proxy.port) as fresh:
        fresh.sendall(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_all(fresh).startswith(b"HTTP/1.1 403 ")


def test_a_rule_ban_closes_the_clients_other_connections(start_proxylog, puma: Puma) -> None:
    """A ban a rule imposes (three probes) closes the client's other keep-alive connection,
    which was idle the whole time."""
    proxy = start_proxylog({**BANS, "rules": RULES})
    with _connect(proxy.port) as other:
        assert _get(other, "/before") == 200
        for path in PROBES:
            with _connect(proxy.port) as probe:
                probe.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
                read_all(probe)
        assert closed_by_peer(other)


def test_a_ban_in_monitor_mode_closes_nothing(start_proxylog, puma: Puma) -> None:
    """In monitor mode a ban refuses nothing, so the client's connection stays open and is
    answered."""
    proxy = start_proxylog({**BANS, "mode": "monitor"})
    with _connect(proxy.port) as sock:
        assert _get(sock, "/before") == 200
        assert ctl(proxy, "ban", "127.0.0.1", "--ttl", "1m").returncode == 0
        time.sleep(0.5)  # what a close would take; no timing is asserted
        assert _get(sock, "/after") == 200
