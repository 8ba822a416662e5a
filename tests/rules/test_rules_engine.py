"""The RuleEngine API around the rules: bans, allowlist, reloads, events, bounded state, windows."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxylog.config.reader import Node
from proxylog.config.rule_specs import RulesSpec
from proxylog.config.rules import parse_rules
from proxylog.errors import ConfigError
from proxylog.identity import TrustedProxies
from proxylog.record import Mode
from proxylog.rules import Ban, RequestFacts, RuleEngine, RuleEvent
from proxylog.rules.compiled import fingerprint
from proxylog.state import CounterSpec
from proxylog.state.memory import ExactDistinct, ExactWindow, MemoryBanTable, MemoryCounter, MemoryStore
from proxylog.testing import FakeClock


def _spec(rules: list[dict[str, Any]] | None = None, allow: list[str] | None = None) -> RulesSpec:
    return parse_rules(
        Node(rules, "rules") if rules is not None else None,
        None,
        Node(allow, "allow") if allow is not None else None,
    )


def _facts(
    ip: str = "203.0.113.7", path: str = "/", ua: str | None = "Mozilla/5.0", resolved: bool = True
) -> RequestFacts:
    return RequestFacts(
        0.0, ip, "GET", path, None, ua, frozenset({"user-agent"}), "app.example.com", resolved
    )


ROOT = Path(__file__).resolve().parents[2]
ERRORS = {"id": "errors", "when": {"status": ["4xx"]}, "threshold": 3, "action": "block", "ban": "10m"}


def test_empty_engine_is_disabled_until_a_ban_exists() -> None:
    """With nothing to evaluate the addon may skip the engine, but an operator ban enables it."""
    engine = RuleEngine(_spec(), FakeClock())
    assert not engine.enabled
    engine.ban("192.0.2.1", 60)
    assert engine.enabled
    assert engine.check(_facts("192.0.2.1")).block


@pytest.mark.parametrize(
    ("key", "stored"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("192.0.2.1/32", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("192.0.2.77/24", "192.0.2.0/24"),
        ("2001:DB8::1/64", "2001:db8::/64"),
    ],
)
def test_manual_ban_keys_are_normalized(key: str, stored: str) -> None:
    """Operator ban keys are stored canonically (host bits dropped, IPv4-mapped unwrapped)."""
    engine = RuleEngine(_spec(), FakeClock())
    assert engine.ban(key, 60).key == stored
    assert [b.key for b in engine.bans()] == [stored]


@pytest.mark.parametrize(("key", "ttl"), [("not-an-ip", 60), ("10.0.0.0/33", 60), ("192.0.2.1", 0)])
def test_manual_ban_rejects_bad_input(key: str, ttl: float) -> None:
    """A bad key or a TTL that is not positive raises ValueError."""
    with pytest.raises(ValueError):
        RuleEngine(_spec(), FakeClock()).ban(key, ttl)


def test_ban_enforced_says_which_clients_a_ban_now_refuses() -> None:
    """What a plane asks of its open connections once a ban is imposed: covered by an active
    ban (its own address or a banned network), not allowlisted, enforced by the live mode
    unless the ban's rule forces its own."""
    clock = FakeClock()
    engine = RuleEngine(_spec([{**ERRORS, "mode": "monitor"}], allow=["192.0.2.9"]), clock)
    assert not engine.ban_enforced("192.0.2.1", Mode.ENFORCE)
    engine.ban("192.0.2.0/24", 60)
    assert engine.ban_enforced("192.0.2.1", Mode.ENFORCE)
    assert not engine.ban_enforced("192.0.2.1", Mode.MONITOR)
    assert not engine.ban_enforced("192.0.2.9", Mode.ENFORCE)  # allowlisted
    assert not engine.ban_enforced("198.51.100.1", Mode.ENFORCE)
    for status in (404, 404, 404):  # the monitor-only rule bans 203.0.113.7
        engine.observe(_facts(), status)
    assert [b.key for b in engine.bans()] == ["192.0.2.0/24", "203.0.113.7"]
    assert not engine.ban_enforced("203.0.113.7", Mode.ENFORCE)
    clock.advance(61)
    assert not engine.ban_enforced("192.0.2.1", Mode.ENFORCE)


def test_bans_list_soonest_expiry_first_and_unban() -> None:
    """bans() lists active bans soonest first; unban lifts one and says whether it existed."""
    clock = FakeClock()
    events: list[RuleEvent] = []
    engine = RuleEngine(_spec(), clock, listener=events.append)
    engine.ban("192.0.2.1", 300)
    engine.ban("192.0.2.2", 100, reason="testing")
    assert [b.key for b in engine.bans()] == ["192.0.2.2", "192.0.2.1"]
    assert engine.unban("::ffff:192.0.2.2") is True
    assert engine.unban("192.0.2.2") is False
    clock.advance(301)
    assert engine.bans() == []
    assert [(e.kind, e.key) for e in events] == [
        ("ban", "192.0.2.1"),
        ("ban", "192.0.2.2"),
        ("unban", "192.0.2.2"),
    ]


def test_restore_bans_skips_expired_ones() -> None:
    """Persisted bans come back after a restart unless they have expired meanwhile."""
    clock = FakeClock()
    engine = RuleEngine(_spec([ERRORS]), clock)
    now = clock()
    engine.restore_bans(
        [
            Ban("192.0.2.1", "errors", now - 100, now + 100, 2),
            Ban("192.0.2.2", "errors", now - 100, now - 1),
            Ban("garbage", "errors", now, now + 100),
        ]
    )
    assert [(b.key, b.count) for b in engine.bans()] == [("192.0.2.1", 2)]
    verdict = engine.check(_facts("192.0.2.1"))
    assert (verdict.block, verdict.tags) == (True, ("errors",))


def test_runtime_allowlist() -> None:
    """allow/disallow change the runtime allowlist at once; config entries cannot be removed."""
    engine = RuleEngine(_spec([{"id": "all", "action": "block"}], allow=["10.0.0.0/8"]), FakeClock())
    assert engine.check(_facts("198.51.100.1")).block
    engine.allow("198.51.100.0/24")
    assert not engine.check(_facts("198.51.100.1")).block
    assert engine.allowlist() == ["10.0.0.0/8", "198.51.100.0/24"]
    assert engine.disallow("10.0.0.0/8") is False
    assert engine.disallow("198.51.100.0/24") is True
    assert engine.check(_facts("198.51.100.1")).block
    with pytest.raises(ValueError):
        engine.allow("nonsense")


def _observe_errors(engine: RuleEngine, ip: str, count: int) -> None:
    for _ in range(count):
        engine.observe(_facts(ip), 404)


def test_reload_keeps_bans_and_counters_of_unchanged_rules() -> None:
    """A reload carries bans, runtime allowlist and unchanged rules' counts; a changed rule restarts."""
    clock = FakeClock()
    other = {"id": "other", "when": {"status": [500]}, "threshold": 5, "action": "tag"}
    old = RuleEngine(_spec([ERRORS, other]), clock)
    _observe_errors(old, "192.0.2.1", 2)
    old.observe(_facts("192.0.2.1"), 500)
    old.ban("198.51.100.9", 60)
    old.allow("192.0.2.200")
    changed = {**other, "threshold": 6}
    new = RuleEngine(_spec([ERRORS, changed]), clock, previous=old)
    assert [b.key for b in new.bans()] == ["198.51.100.9"]
    assert new.allowlist() == ["192.0.2.200/32"]
    assert (new.peek("errors", "192.0.2.1"), new.peek("other", "192.0.2.1")) == (2, 0)
    assert new.observe(_facts("192.0.2.1"), 404).rules[0].count == 3


def test_a_failing_listener_does_not_break_the_request_path(caplog: pytest.LogCaptureFixture) -> None:
    """A listener that raises is logged; the verdict is still returned."""

    def explode(event: RuleEvent) -> None:
        raise RuntimeError("alert sink down")

    engine = RuleEngine(_spec([{"id": "all", "action": "block", "ban": "1m"}]), FakeClock(), listener=explode)
    assert engine.check(_facts()).block
    assert "listener failed" in caplog.text


def test_a_million_clients_cannot_grow_counters_but_never_evict_bans() -> None:
    """Counters are bounded by max_keys per tier (the oldest one-off keys forgotten); bans live
    apart and survive the flood."""
    clock = FakeClock()
    rule = {**ERRORS, "threshold": 2, "max_keys": 1000}
    engine = RuleEngine(_spec([rule]), clock)
    _observe_errors(engine, "192.0.2.1", 2)
    for n in range(50_000):
        engine.observe(_facts(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"), 404)
    stats: Any = engine.stats().as_dict()
    assert stats["rules"]["errors"]["keys"] == 1001  # 1000 seen once, and the banned key
    assert [b.key for b in engine.bans()] == ["192.0.2.1"]
    assert engine.check(_facts("192.0.2.1")).block


def test_a_full_ban_table_refuses_rather_than_evicts() -> None:
    """When the ban table is full new bans are refused and counted; existing ones stay."""
    table = MemoryBanTable(max_bans=2)
    assert table.put(Ban("192.0.2.1", "r", 0, 10)) and table.put(Ban("192.0.2.2", "r", 0, 10))
    assert not table.put(Ban("192.0.2.3", "r", 0, 10))
    assert table.put(Ban("192.0.2.1", "r", 0, 20))  # replacing an existing key is fine
    assert (len(table), table.refused) == (2, 1)
    assert [b.key for b in table.expire(15)] == ["192.0.2.2"]


def test_network_bans_are_found_for_every_address_inside() -> None:
    """The ban table tracks which prefix lengths are banned, so lookups stay O(prefixes in use)."""
    table = MemoryBanTable()
    table.put(Ban("10.0.0.0/8", "r", 0, 10))
    table.put(Ban("2001:db8::/48", "r", 0, 10))
    table.put(Ban("2001:db8:1::/64", "r", 0, 10))
    assert (table.prefixes(4), table.prefixes(6)) == ((8,), (64, 48))
    table.pop("2001:db8::/48")
    assert table.prefixes(6) == (64,)


def test_stats_report_rules_bans_and_intel() -> None:
    """stats() has per-rule counts and ban totals for metrics."""
    engine = RuleEngine(_spec([ERRORS]), FakeClock())
    _observe_errors(engine, "192.0.2.1", 3)
    stats: Any = engine.stats().as_dict()
    assert stats["rules"]["errors"] == {"matched": 3, "fired": 1, "bans": 1, "keys": 1}
    assert stats["rule_hits"] == {"errors": 3}
    assert stats["bans"] == {"active": 1, "refused": 0}
    assert stats["observes"] == 3


def test_fingerprints_ignore_set_order() -> None:
    """A rule's counter name is stable across processes: set-valued fields are sorted."""
    a = _spec([{"id": "m", "when": {"method": ["GET", "POST", "PUT"]}}]).rules[0]
    b = _spec([{"id": "m", "when": {"method": ["PUT", "POST", "GET"]}}]).rules[0]
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(_spec([{"id": "m", "when": {"method": ["GET"]}}]).rules[0])


def test_memory_store_recreates_a_counter_whose_spec_changed() -> None:
    """Asking for a counter by name with another spec gives a fresh counter."""
    store = MemoryStore()
    spec = CounterSpec(window=60, precision="exact", distinct=False, cap=5, max_keys=10)
    counter = store.counter("r:1", spec)
    counter.add("k", 0.0)
    assert store.counter("r:1", spec) is counter
    assert store.counter("r:1", CounterSpec(60, "approx", False, 5, 10)).peek("k", 0.0) == 0


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1, max_size=40),
    window=st.floats(min_value=0.5, max_value=30),
    cap=st.integers(min_value=1, max_value=10),
)
def test_exact_window_matches_a_brute_force_count(times: list[float], window: float, cap: int) -> None:
    """An exact window's count is the number of events in (now - window, now], capped at `cap`."""
    times.sort()
    w = ExactWindow(cap)
    for i, now in enumerate(times):
        got = w.add(now, window, None)
        truth = sum(1 for t in times[: i + 1] if t > now - window)
        assert got == min(truth, cap)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.floats(min_value=0, max_value=100, allow_nan=False), st.sampled_from("abcdefg")),
        min_size=1,
        max_size=40,
    ),
    window=st.floats(min_value=0.5, max_value=30),
    cap=st.integers(min_value=1, max_value=8),
)
def test_exact_distinct_matches_a_brute_force_count(
    events: list[tuple[float, str]], window: float, cap: int
) -> None:
    """An exact distinct window counts the members last seen within the window, capped at `cap`."""
    events.sort()
    w = ExactDistinct(cap)
    for i, (now, member) in enumerate(events):
        got = w.add(now, window, member)
        last_seen: dict[str, float] = {}
        for t, m in events[: i + 1]:
            last_seen[m] = t
        truth = sum(1 for t in last_seen.values() if t > now - window)
        assert got == min(truth, cap)


@settings(max_examples=100, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=60),
    window=st.floats(min_value=1, max_value=20),
)
def test_approx_window_stays_between_the_windows_it_spans(gaps: list[float], window: float) -> None:
    """The two-bucket estimate never exceeds the events of the last two windows nor undercounts the
    current bucket."""
    counter = MemoryCounter(
        CounterSpec(window=window, precision="approx", distinct=False, cap=1, max_keys=10)
    )
    now = 0.0
    seen: list[float] = []
    for gap in gaps:
        now += gap
        seen.append(now)
        estimate = counter.add("k", now)
        assert 1 <= estimate <= sum(1 for t in seen if t > now - 2 * window)


DEFAULT_PACK = {"include": "configs/rules/default.yaml"}
TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)
SQLMAP = "sqlmap/1.7"


def _pack_engine(extra: list[dict[str, Any]] | None = None) -> RuleEngine:
    spec = parse_rules(Node([DEFAULT_PACK, *(extra or [])], "rules"), None, None, base_dir=ROOT)
    return RuleEngine(spec, FakeClock())


def test_a_scanner_behind_a_balancer_writing_ports_is_banned_not_the_balancer() -> None:
    """An ``ip:port`` X-Forwarded-For hop names the client: the scanner is banned, the balancer never."""
    engine = _pack_engine()
    identity = TrustedProxies(TRUSTED).resolve("10.0.0.5", ["203.0.113.9:51514"])
    assert engine.check(_facts(identity.ip, ua=SQLMAP)).block
    assert [b.key for b in engine.bans()] == ["203.0.113.9"]
    assert not engine.check(_facts("198.51.100.7")).block


def test_an_unresolved_client_is_tagged_never_counted_blocked_or_banned() -> None:
    """A client that is a trusted proxy (the walk hit garbage) gets only global rules and a tag."""
    spike = {"id": "spike", "key": "global", "when": {"status": ["5xx"]}, "threshold": 5}
    net = {**ERRORS, "id": "net", "key": "client_net", "prefix": {"v4": 24}, "threshold": 2}
    engine = _pack_engine([spike, net])
    garbage = TrustedProxies(TRUSTED).resolve("10.0.0.5", ["unknown"])
    assert garbage.ip == "10.0.0.5"
    for _ in range(5):
        facts = _facts(garbage.ip, path="/.env", ua=SQLMAP, resolved=garbage.resolved)
        verdict = engine.check(facts)
        assert (verdict.block, verdict.tags) == (False, ("unresolved-client",))
        observed = engine.observe(facts, 500)
    assert observed.tags == ("spike",)  # global rules still count it
    assert engine.bans() == []
    assert engine.peek("net", "10.0.0.5") == 0  # its /24 is never counted, so never banned


def test_bans_covering_a_trusted_proxy_never_block_its_unresolved_requests() -> None:
    """A ban of a trusted proxy's network (a neighbour's, or a stale one) never blocks the proxy."""
    engine = _pack_engine()
    engine.ban("10.0.0.0/24", 60)
    engine.ban("10.0.0.5", 60)
    proxy = TrustedProxies(TRUSTED).resolve("10.0.0.5", [])
    assert not proxy.resolved
    assert not engine.check(_facts(proxy.ip, resolved=False)).block
    assert engine.check(_facts(proxy.ip, resolved=False)).tags == ("unresolved-client",)


def test_ipv4_mapped_allow_entries_cover_ipv4_clients() -> None:
    """``allow: ["::ffff:192.0.2.0/120"]`` allowlists 192.0.2.0/24, as clients are unwrapped to IPv4."""
    spec = _spec([{"id": "all", "action": "block"}], allow=["::ffff:192.0.2.0/120"])
    engine = RuleEngine(spec, FakeClock())
    assert not engine.check(_facts("192.0.2.5")).block
    assert not engine.check(_facts("::ffff:192.0.2.5")).block
    assert engine.check(_facts("192.0.3.5")).block


def test_allowlisted_clients_are_never_counted_by_status_rules() -> None:
    """An allowlisted client hammering 404s and 401s is never tagged, counted or banned."""
    probing = {"id": "probing", "when": {"status": [404]}, "distinct": "path", "threshold": 3}
    engine = RuleEngine(_spec([ERRORS, probing], allow=["192.0.2.0/24"]), FakeClock())
    for n in range(20):
        verdict = engine.observe(_facts("192.0.2.9", path=f"/missing/{n}"), 404 if n % 2 else 401)
        assert (verdict.tags, verdict.rules) == ((), ())
    assert engine.bans() == []
    assert (engine.peek("errors", "192.0.2.9"), engine.peek("probing", "192.0.2.9")) == (0, 0)


def test_patterns_too_large_together_are_a_config_error_naming_the_rules() -> None:
    """Patterns that each compile but overflow re2's set together fail the engine build cleanly."""
    rules = [{"id": f"long-{n}", "when": {"path": c * 50_000}} for n, c in enumerate("ab")]
    with pytest.raises(ConfigError) as info:
        RuleEngine(_spec(rules), FakeClock())
    assert info.value.path == "rules"
    assert "path" in info.value.message and "long-0, long-1" in info.value.message
