"""Slow and greedy clients, with the config keys that bound them, on both engines:
`timeouts.body_rate`/`body_window` (a body must keep arriving), `timeouts.write` (a response
must be read), `limits.connections_per_client`, and a banned client's open connections
(blocked means closed)."""

from __future__ import annotations

import contextlib
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


def test_pipelined_requests_wait_until_the_client_reads_and_never_reach_puma(
    start_proxylog, puma: Puma
) -> None:
    """Eight pipelined GETs of 1 MiB, none read: the first is answered (its response fills
    the kernel's buffers), the second is held unforwarded until `timeouts.write` and then
    recorded client_timeout, the connection is reset, and Puma saw only the first: a client
    that reads nothing cannot keep more than one of its requests at Puma."""
    proxy = start_proxylog(WRITE_TIMEOUT)
    tag = uuid.uuid4().hex
    with _connect(proxy.port, 30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            b"".join(f"GET /large?mb=1&{tag}={i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(8))
        )
        _wait_until(lambda: any("error" in r for r in proxy.access()), timeout=20)
        received = len(read_all(sock))
    served, held = proxy.access(2)
    assert served["http"]["response"]["status_code"] == 200 and "error" not in served
    assert held["error"] == {
        "type": "client_timeout",
        "message": "the client did not read its earlier responses for 1 s",
    }
    assert held["url"]["query"] == f"mb=1&{tag}=1"
    assert "status_code" not in held["http"].get("response", {})
    assert puma.seen(f"/large?mb=1&{tag}") == [f"/large?mb=1&{tag}=0"]
    assert received < 2 * 1024 * 1024


@pytest.mark.parametrize("drained", [False, True], ids=["reset", "drained-then-closed"])
def test_a_client_closing_while_its_request_is_held_is_recorded_and_frees_its_slot(
    start_proxylog, puma: Puma, drained: bool
) -> None:
    """A client holding a request back (two pipelined 1 MiB GETs, the second held) closes:
    with its responses unread (a reset), or after reading what had arrived (a FIN, then a
    reset when the proxy sends more). The held request is recorded client_disconnect, never
    reaches Puma, and the connection no longer counts against the client's one-connection
    cap: the next connection is served, long before `timeouts.write`."""
    proxy = start_proxylog({"limits": {"connections_per_client": 1}})
    tag = uuid.uuid4().hex
    sock = _connect(proxy.port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        b"".join(f"GET /large?mb=1&{tag}={i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(2))
    )
    _wait_until(lambda: len(proxy.access()) == 1)  # the first answered, the second held
    if drained:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while sock.recv(65536):
                pass
    sock.close()
    _wait_until(lambda: len(proxy.access()) == 2, timeout=20)
    held = proxy.access()[1]
    assert held["error"] == {"type": "client_disconnect", "message": "the client closed the connection"}
    assert held["url"]["query"] == f"mb=1&{tag}=1"
    with _connect(proxy.port) as fresh:
        assert _get(fresh, "/after") == 200
    assert puma.seen(f"/large?mb=1&{tag}") == [f"/large?mb=1&{tag}=0"]


def test_pipelined_requests_held_for_a_slow_reader_go_on_as_it_reads(start_proxylog, puma: Puma) -> None:
    """The same eight GETs from a client that reads them: each request after the first
    is held while the response before it sits unread in the kernel's buffers, and goes on
    as the client reads; all eight are answered in order, whole, and recorded without an
    error."""
    proxy = start_proxylog({"timeouts": {"write": "20s"}})
    tag = uuid.uuid4().hex
    with _connect(proxy.port, 30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(
            b"".join(f"GET /large?mb=1&{tag}={i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(8))
        )
        reader = sock.makefile("rb")
        responses = [read_response(reader) for _ in range(8)]
    assert [r.status for r in responses] == [200] * 8
    assert all(len(r.body) == 1024 * 1024 for r in responses)
    records = proxy.access(8)
    assert [r["url"]["query"] for r in records] == [f"mb=1&{tag}={i}" for i in range(8)]
    assert all("error" not in r for r in records)
    assert puma.seen(f"/large?mb=1&{tag}") == [f"/large?mb=1&{tag}={i}" for i in range(8)]


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


def test_switching_to_enforce_closes_the_connections_of_clients_banned_in_monitor(
    start_proxylog, puma: Puma
) -> None:
    """A ban made in monitor mode starts refusing when an operator switches to enforce: the
    banned client's idle keep-alive connection is closed then, as a new ban would close it."""
    proxy = start_proxylog({**BANS, "mode": "monitor"})
    with _connect(proxy.port) as sock:
        assert _get(sock, "/before") == 200
        assert ctl(proxy, "ban", "127.0.0.1", "--ttl", "1m").returncode == 0
        assert _get(sock, "/monitored") == 200
        assert ctl(proxy, "mode", "enforce").returncode == 0
        assert closed_by_peer(sock)
