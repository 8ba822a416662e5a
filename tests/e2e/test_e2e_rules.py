"""Rules end to end: a real proxylog in front of real Puma, clients crossing thresholds.

Each test uses its own path prefix, so the assertions on what Puma saw (its /__seen route)
are not disturbed by other tests sharing the session's Puma.
"""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

import pytest

from tests._http import request
from tests.conftest import Puma
from tests.ops.test_control import ctl_json

PROBE_RULES = [
    {
        "id": "probe",
        "when": {"path": "^/[a-z0-9]+/secret"},
        "threshold": 2,
        "window": "60s",
        "action": "block",
        "ban": "2s",
    },
    {"id": "errors", "when": {"status": ["4xx"]}, "threshold": 3, "window": "60s", "action": "tag"},
    {"id": "flood", "when": {"path": "^/[a-z0-9]+/api"}, "threshold": 3, "window": "60s", "action": "block"},
]


@pytest.fixture
def prefix() -> str:
    return "/" + uuid.uuid4().hex[:12]


def by_path(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        r["url"]["path"] + (f"?{r['url']['query']}" if "query" in r["url"] else ""): r
        for r in records
        if "url" in r
    }


def test_monitor_mode_tags_and_lets_everything_through(start_proxylog, puma: Puma, prefix: str) -> None:
    """In monitor mode a client crossing a block threshold is tagged, recorded as would_block, and
    Puma receives every request with the X-Proxylog-Tags header."""
    proxy = start_proxylog({"rules": PROBE_RULES, "mode": "monitor"})
    first = request(proxy.url, f"{prefix}/secret")
    second = request(proxy.url, f"{prefix}/secret")
    after = request(proxy.url, f"{prefix}/ok")
    assert (first.status, second.status, after.status) == (200, 200, 200)
    assert "HTTP_X_PROXYLOG_TAGS" not in first.json()["headers"]
    assert "probe" in second.json()["headers"]["HTTP_X_PROXYLOG_TAGS"].split(",")
    assert puma.seen(prefix) == [f"{prefix}/secret", f"{prefix}/secret", f"{prefix}/ok"]
    records = by_path(proxy.access(count=3))
    assert records[f"{prefix}/ok"]["event"]["action"] == "would_block"  # the ban, not enforced
    assert records[f"{prefix}/ok"]["proxylog"]["mode"] == "monitor"
    crossing = [r for r in proxy.access() if r["url"]["path"] == f"{prefix}/secret"][1]
    assert crossing["event"]["action"] == "would_block" and crossing["proxylog"]["enforced"] is False
    assert crossing["proxylog"]["rules"][0]["id"] == "probe"


def test_enforce_mode_blocks_then_bans_until_the_ttl(start_proxylog, puma: Puma, prefix: str) -> None:
    """In enforce mode the crossing request gets 403, the client is banned (Puma sees nothing
    further, bodies unread), and the ban lifts after its TTL."""
    proxy = start_proxylog({"rules": PROBE_RULES}, args=["--enforce"])
    assert request(proxy.url, f"{prefix}/secret").status == 200
    assert request(proxy.url, f"{prefix}/secret").status == 403
    banned = request(proxy.url, f"{prefix}/upload", method="POST", body=b"x" * 2_000_000)
    assert banned.status == 403
    assert puma.seen(prefix) == [f"{prefix}/secret"]
    records = by_path(proxy.access(count=3))
    upload = records[f"{prefix}/upload"]
    assert upload["event"]["action"] == "blocked" and upload["proxylog"]["enforced"] is True
    assert upload["http"]["request"]["body"]["bytes"] == 0
    assert "upstream" not in upload["proxylog"]

    deadline = time.monotonic() + 15
    while request(proxy.url, f"{prefix}/later").status == 403 and time.monotonic() < deadline:
        time.sleep(0.25)
    assert request(proxy.url, f"{prefix}/later").status == 200
    assert f"{prefix}/later" in puma.seen(prefix)


def test_rate_rule_answers_429_with_retry_after(start_proxylog, prefix: str) -> None:
    """A block rule without a ban answers 429 with Retry-After while the client is over the rate."""
    rules = [
        {
            "id": "flood",
            "when": {"path": "^/[a-z0-9]+/api"},
            "threshold": 3,
            "window": "60s",
            "action": "block",
            "response": {"status": 429},
        }
    ]
    proxy = start_proxylog({"rules": rules}, args=["--enforce"])
    statuses = [request(proxy.url, f"{prefix}/api") for _ in range(4)]
    assert [r.status for r in statuses] == [200, 200, 429, 429]
    assert int(statuses[2].headers["Retry-After"]) > 0


def test_status_rule_tags_the_following_requests(start_proxylog, prefix: str) -> None:
    """A tag rule on 4xx responses fires on the third 404, and the client's next request
    reaches Puma carrying the tag."""
    proxy = start_proxylog({"rules": PROBE_RULES})
    for _ in range(3):
        assert request(proxy.url, "/status/404").status == 404
    tagged = request(proxy.url, f"{prefix}/next").json()["headers"]
    assert "errors" in tagged.get("HTTP_X_PROXYLOG_TAGS", "").split(",")


def test_blocked_slow_upload_is_never_read(start_proxylog, puma: Puma, prefix: str) -> None:
    """A banned client announcing a large body gets its 403 at once; proxylog never waits for it."""
    proxy = start_proxylog({"rules": PROBE_RULES}, args=["--enforce"])
    request(proxy.url, f"{prefix}/secret")
    request(proxy.url, f"{prefix}/secret")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(f"POST {prefix}/big HTTP/1.1\r\nHost: app\r\nContent-Length: 100000000\r\n\r\n".encode())
        reply = sock.recv(65536)  # no body sent at all: an answer here proves nothing waited for it
    assert reply.startswith(b"HTTP/1.1 403")
    assert f"{prefix}/big" not in puma.seen(prefix)


def test_a_blocked_upload_is_answered_then_its_connection_closed(
    start_proxylog, puma: Puma, prefix: str
) -> None:
    """A banned client streaming a large upload gets its 403 with `Connection: close`, and the
    proxy closes the connection after it (within its linger) instead of reading the upload:
    the client's sending ends in an error or the proxy's EOF long before 64 MiB, the record
    counts no body, and Puma sees nothing."""
    proxy = start_proxylog({"rules": PROBE_RULES}, args=["--enforce"])
    request(proxy.url, f"{prefix}/secret")
    request(proxy.url, f"{prefix}/secret")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            f"POST {prefix}/big HTTP/1.1\r\nHost: app\r\nContent-Length: {64 << 20}\r\n\r\n".encode()
        )
        sock.settimeout(0.2)
        reply, sent, closed = b"", 0, False
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not closed:
            try:
                sent += sock.send(b"x" * 65536)
            except TimeoutError:
                pass  # the proxy reads nothing more: the buffers are full
            except OSError:
                closed = True  # reset or broken pipe: the proxy closed it
            try:
                chunk = sock.recv(65536)
                reply += chunk
                closed = closed or chunk == b""
            except TimeoutError:
                pass
            except OSError:
                closed = True
    assert reply.startswith(b"HTTP/1.1 403") and b"connection: close" in reply.lower()
    assert closed and sent < 64 << 20
    [record] = [r for r in proxy.access(count=3) if r["url"]["path"] == f"{prefix}/big"]
    assert record["http"]["request"]["body"]["bytes"] == 0
    assert f"{prefix}/big" not in puma.seen(prefix)


def test_allowlist_always_wins(start_proxylog, prefix: str) -> None:
    """An allowlisted client is never counted, tagged or blocked, even in enforce mode."""
    proxy = start_proxylog({"rules": PROBE_RULES, "allow": ["127.0.0.0/8"]}, args=["--enforce"])
    assert [request(proxy.url, f"{prefix}/secret").status for _ in range(5)] == [200] * 5
    access = proxy.access(count=5)
    assert all(r["event"]["action"] == "allowed" and not r.get("tags") for r in access)


def test_behind_a_balancer_only_the_real_client_is_banned(start_proxylog, puma: Puma, prefix: str) -> None:
    """Behind a trusted balancer that writes `ip:port`, the client is the address before the
    port; a request whose X-Forwarded-For names no client is never held against the balancer."""
    proxy = start_proxylog({"rules": PROBE_RULES, "mode": "enforce", "trusted_proxies": ["127.0.0.0/8"]})
    scanner = [("X-Forwarded-For", "203.0.113.9:51514")]
    garbage = [("X-Forwarded-For", "unknown")]
    statuses = [request(proxy.url, f"{prefix}/secret", headers=scanner).status for _ in range(2)]
    assert statuses == [200, 403]
    for _ in range(3):  # past the probe threshold, from the balancer's own address
        assert request(proxy.url, f"{prefix}/secret", headers=garbage).status == 200
    innocent = [("X-Forwarded-For", "198.51.100.20:40000")]
    assert request(proxy.url, f"{prefix}/ok", headers=innocent).status == 200
    records = [r for r in proxy.access(count=6) if r["url"]["path"].startswith(prefix)]
    assert records[0]["client"]["ip"] == "203.0.113.9"
    unresolved = [r for r in records if r["client"]["ip"] == "127.0.0.1"]
    assert len(unresolved) == 3
    assert all("unresolved-client" in r.get("tags", []) for r in unresolved)
    assert [ban["key"] for ban in ctl_json(proxy, "bans")["bans"]] == ["203.0.113.9"]
