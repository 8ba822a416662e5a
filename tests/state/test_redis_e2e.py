"""Two real proxylog instances sharing one real redis-server, in front of the same Puma.

A client is told apart by X-Forwarded-For (loopback is a trusted proxy), so each test bans
and counts its own addresses."""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

from tests._http import request
from tests.fast._http import closed_by_peer, read_response
from tests.ops.test_control import ctl, ctl_json, wait_until
from tests.state.conftest import RedisServer

PROBE = {
    "id": "probe",
    "when": {"path": "^/[a-z0-9]+/secret"},
    "threshold": 6,
    "window": "60s",
    "action": "block",
    "ban": "60s",
}
# The staleness target: a threshold crossed over several instances is acted on within 250 ms.
PACE = 0.3


def shared(redis_server: RedisServer, **config: Any) -> dict[str, Any]:
    return {
        "state": {"backend": "redis", "url": redis_server.url, "key_prefix": f"t{uuid.uuid4().hex[:6]}:"},
        "trusted_proxies": ["127.0.0.0/8"],
        "rules": [PROBE],
        **config,
    }


def status(proxy: Any, ip: str, path: str = "/ok") -> int:
    return request(proxy.url, path, headers=[("X-Forwarded-For", ip)]).status


def test_a_ban_through_one_instance_blocks_on_the_other(start_proxylog, redis_server: RedisServer) -> None:
    config = shared(redis_server, mode="enforce")
    a, b = start_proxylog(config), start_proxylog(config)
    assert status(b, "203.0.113.50") == 200
    assert ctl(a, "ban", "203.0.113.50", "--ttl", "5m").returncode == 0
    assert wait_until(lambda: status(b, "203.0.113.50") == 403)
    assert status(b, "203.0.113.51") == 200  # only that client
    assert [ban["key"] for ban in ctl_json(b, "bans")["bans"]] == ["203.0.113.50"]
    assert ctl(b, "unban", "203.0.113.50").returncode == 0
    assert wait_until(lambda: status(a, "203.0.113.50") == 200)


def test_a_ban_through_one_instance_closes_the_clients_connections_on_the_other(
    start_proxylog, redis_server: RedisServer
) -> None:
    """Blocked means closed across instances: a ban made on one (here by `ctl`, as a rule's
    would be) reaches the other through Redis and closes the banned client's idle keep-alive
    connection there. The client is the peer address here (no trusted proxy), and the
    header deadline, which also closes idle connections on the mitmproxy plane, is longer
    than the test waits."""
    config = {**shared(redis_server, mode="enforce"), "trusted_proxies": [], "timeouts": {"header": "60s"}}
    a, b = start_proxylog(config), start_proxylog(config)
    with socket.create_connection(("127.0.0.1", b.port), timeout=20) as sock:
        sock.sendall(b"GET /before HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock.makefile("rb")).status == 200
        assert ctl(a, "ban", "127.0.0.1", "--ttl", "1m").returncode == 0
        assert closed_by_peer(sock)
    assert [ban["key"] for ban in ctl_json(b, "bans")["bans"]] == ["127.0.0.1"]


def test_ctl_mode_and_allow_on_one_instance_apply_to_both(start_proxylog, redis_server: RedisServer) -> None:
    config = shared(redis_server, mode="monitor")
    a, b = start_proxylog(config), start_proxylog(config)
    assert ctl(a, "ban", "203.0.113.60").returncode == 0
    assert wait_until(lambda: ctl_json(b, "bans")["bans"])
    assert status(b, "203.0.113.60") == 200  # monitor: banned, not blocked
    assert ctl(a, "mode", "enforce").returncode == 0
    assert wait_until(lambda: ctl_json(b, "status")["mode"] == "enforce")
    assert status(b, "203.0.113.60") == 403
    audits = [r for r in b.records() if r["event"]["action"] == "audit.mode"]
    assert audits and audits[-1]["proxylog"]["audit"]["new"] == "enforce"
    assert ctl(b, "allow", "add", "203.0.113.0/24").returncode == 0
    assert wait_until(lambda: status(a, "203.0.113.60") == 200)  # allowlisted on A too


def test_a_scanner_alternating_between_instances_is_stopped_at_the_threshold(
    start_proxylog, redis_server: RedisServer, puma: Any
) -> None:
    """Each instance alone would let it through 5 times (10 in all); shared, the 6th request
    overall is blocked, and the ban then holds on both."""
    config = shared(redis_server, mode="enforce")
    proxies = [start_proxylog(config), start_proxylog(config)]
    prefix = "/" + uuid.uuid4().hex[:12]
    statuses = []
    for n in range(12):
        statuses.append(status(proxies[n % 2], "198.51.100.70", f"{prefix}/secret"))
        time.sleep(PACE)
    assert statuses[: PROBE["threshold"] - 1] == [200] * (PROBE["threshold"] - 1), statuses
    assert set(statuses[PROBE["threshold"] - 1 :]) == {403}, statuses
    assert len(puma.seen(prefix)) == PROBE["threshold"] - 1


def test_redis_down_fails_no_request_and_state_converges_when_it_returns(
    start_proxylog, redis_server: RedisServer
) -> None:
    """Kill redis-server mid-run: every request still succeeds and both instances record the
    degradation; a ban made through one during the outage holds on the other once Redis is
    back (it restarts empty), as does a ban made before the outage."""
    config = shared(redis_server, mode="enforce")
    a, b = start_proxylog(config), start_proxylog(config)
    assert ctl(a, "ban", "203.0.113.80").returncode == 0
    assert wait_until(lambda: status(b, "203.0.113.80") == 403)
    redis_server.stop()
    statuses = [status(proxy, f"198.51.100.{n}") for n in range(20) for proxy in (a, b)]
    assert statuses == [200] * 40
    for proxy in (a, b):
        assert wait_until(lambda p=proxy: any(r["event"]["action"] == "state.degraded" for r in p.records()))
        assert wait_until(lambda p=proxy: ctl_json(p, "status")["state"]["degraded"])
    assert ctl(a, "ban", "203.0.113.81").returncode == 0
    assert status(a, "203.0.113.81") == 403
    assert status(b, "203.0.113.81") == 200  # not shared yet
    redis_server.start()
    assert wait_until(lambda: status(b, "203.0.113.81") == 403, timeout=20)
    assert status(b, "203.0.113.80") == 403
    for proxy in (a, b):
        assert wait_until(lambda p=proxy: not ctl_json(p, "status")["state"]["degraded"])
        assert any(r["event"]["action"] == "state.recovered" for r in proxy.records())
    assert "203.0.113.81" in redis_server.cli("HKEYS", config["state"]["key_prefix"] + "bans")
