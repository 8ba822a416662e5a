"""The Redis store against a real redis-server: two stores stand for two proxylog instances."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from proxylog.config import ConfigError, parse_config
from proxylog.config.state import StateSpec
from proxylog.state import Ban, CounterSpec
from proxylog.state.redis import RedisStore
from tests.state.conftest import RedisServer

EXACT = CounterSpec(window=60.0, precision="exact", distinct=False, cap=100, max_keys=1000)
APPROX = CounterSpec(window=60.0, precision="approx", distinct=False, cap=100, max_keys=1000)
DISTINCT = CounterSpec(window=60.0, precision="exact", distinct=True, cap=100, max_keys=1000)


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `predicate` on the running loop until it holds (the stores sync in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.02)
    return predicate()


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[tuple[RedisStore, RedisStore, list[Any]]]:
    spec = StateSpec(backend="redis", url=redis_server.url, key_prefix="t:", resync_interval=0.5)
    heard: list[Any] = []
    a, b = RedisStore(spec), RedisStore(spec)
    b.listener = lambda kind, value: heard.append((kind, value))
    a.start()
    b.start()
    yield a, b, heard
    await a.close()
    await b.close()


@pytest.mark.parametrize("counter_spec", [EXACT, APPROX], ids=["exact", "approx"])
async def test_counts_add_up_across_instances(stores: Any, counter_spec: CounterSpec) -> None:
    """Events counted on one instance show in the other's count once synced; each instance's
    own events count at once. (An instance learns the others' counts for a key with its own
    next event for that key: that is when the count decides anything.)"""
    a, b, _ = stores
    now = time.time()
    for _ in range(3):
        a.counter("r", counter_spec).add("198.51.100.1", now)
    assert await eventually(lambda: a.stats()["events_flushed"] >= 3)
    assert b.counter("r", counter_spec).add("198.51.100.1", now) == 1  # B has not met the key yet
    assert await eventually(lambda: b.counter("r", counter_spec).peek("198.51.100.1", time.time()) >= 4)
    assert a.counter("r", counter_spec).add("198.51.100.1", time.time()) == 4  # own 4, B's 1 not yet
    assert await eventually(lambda: a.counter("r", counter_spec).peek("198.51.100.1", time.time()) == 5)
    b.counter("r", counter_spec).add("198.51.100.1", time.time())
    assert await eventually(lambda: b.counter("r", counter_spec).peek("198.51.100.1", time.time()) == 6)


async def test_distinct_members_are_counted_once_across_instances(stores: Any) -> None:
    a, b, _ = stores
    now = time.time()
    for path in ("/a", "/b", "/c"):
        a.counter("d", DISTINCT).add("198.51.100.2", now, path)
    assert await eventually(lambda: a.stats()["events_flushed"] >= 3)
    b.counter("d", DISTINCT).add("198.51.100.2", now, "/a")
    b.counter("d", DISTINCT).add("198.51.100.2", now, "/d")
    assert await eventually(lambda: b.counter("d", DISTINCT).peek("198.51.100.2", time.time()) == 4)


async def test_bans_and_unbans_propagate(stores: Any) -> None:
    a, b, _ = stores
    now = time.time()
    a.bans.put(Ban("203.0.113.7", "probe", now, now + 60, count=2, reason="test"))
    ban = await eventually(lambda: b.bans.get("203.0.113.7"))
    assert ban is not None and (ban.rule, ban.count) == ("probe", 2)
    assert b.offend("203.0.113.7", now, 600) == 3  # escalation follows the other instance's ban
    b.bans.pop("203.0.113.7")
    assert await eventually(lambda: a.bans.get("203.0.113.7") is None)


async def test_mode_and_allowlist_reach_the_other_instance(stores: Any) -> None:
    a, _, heard = stores
    a.announce("mode", "enforce")
    a.announce("allow", "192.0.2.0/24")
    assert await eventually(lambda: ("mode", "enforce") in heard and ("allow", "192.0.2.0/24") in heard)
    a.announce("disallow", "192.0.2.0/24")
    assert await eventually(lambda: ("disallow", "192.0.2.0/24") in heard)


async def test_every_key_is_namespaced_and_expires(stores: Any, redis_server: RedisServer) -> None:
    a, b, _ = stores
    now = time.time()
    a.counter("r", EXACT).add("198.51.100.3", now)
    a.counter("q", APPROX).add("198.51.100.3", now)
    a.bans.put(Ban("203.0.113.8", "manual", now, now + 60))
    a.announce("mode", "enforce")
    a.announce("allow", "192.0.2.0/24")
    await eventually(lambda: b.bans.get("203.0.113.8"))
    keys = redis_server.cli("--scan").split()
    assert {k.split(":")[1] for k in keys} >= {"c", "bans", "mode", "allow", "epoch"}
    assert all(k.startswith("t:") for k in keys)
    assert all(int(redis_server.cli("PTTL", k)) > 0 for k in keys), keys


async def test_an_outage_degrades_and_a_ban_made_during_it_is_written_back(
    stores: Any, redis_server: RedisServer
) -> None:
    """Redis dies: counting goes on locally and the listener hears `degraded`; a ban made
    meanwhile reaches the other instance once Redis is back (empty), and so do older bans."""
    a, b, heard = stores
    now = time.time()
    a.bans.put(Ban("203.0.113.20", "manual", now, now + 60))
    await eventually(lambda: b.bans.get("203.0.113.20"))
    redis_server.stop()
    assert a.counter("r", EXACT).add("198.51.100.4", time.time()) == 1
    assert await eventually(lambda: ("degraded" in [k for k, _ in heard]) and a.degraded)
    a.bans.put(Ban("203.0.113.21", "manual", time.time(), time.time() + 60))
    assert b.bans.get("203.0.113.21") is None
    redis_server.start()
    assert await eventually(lambda: b.bans.get("203.0.113.21"), timeout=15)
    assert await eventually(lambda: "recovered" in [k for k, _ in heard] and not b.degraded)
    assert b.bans.get("203.0.113.20") is not None  # written back to the empty Redis, not dropped
    assert "203.0.113.20" in redis_server.cli("HKEYS", "t:bans")
    assert a.stats()["outages"] == 1


def test_config_refuses_a_password_in_the_url_and_reads_it_from_a_file(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=r"state\.url: .*password_file"):
        parse_config({"state": {"backend": "redis", "url": "redis://:hunter2@127.0.0.1:6379"}})
    with pytest.raises(ConfigError, match=r"state: backend redis needs `url`"):
        parse_config({"state": {"backend": "redis"}})
    with pytest.raises(ConfigError, match=r"state\.url: expected a redis/rediss URL"):
        parse_config({"state": {"backend": "redis", "url": "http://127.0.0.1:6379"}})
    secret = tmp_path / "redis.pw"
    secret.write_text("s3cret\n")
    config = parse_config(
        {"state": {"backend": "redis", "url": "rediss://cache:6380/1", "password_file": str(secret)}}
    )
    assert config.state.url == "rediss://cache:6380/1"
    assert RedisStore(config.state)._password == "s3cret"
    missing = StateSpec(backend="redis", url="redis://x:1", password_env="PROXYLOG_NO_SUCH_VAR")
    with pytest.raises(ConfigError, match=r"state\.password_env: environment variable"):
        RedisStore(missing)
