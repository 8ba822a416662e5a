"""Golden rule cases: each tests/data/rules/<case>/ holds a rules.yaml and an events.yaml.

rules.yaml is the ``rules:``/``intel:``/``allow:``/``trusted_proxies:`` part of a config
(paths relative to the case). events.yaml lists timestamped requests (`at` seconds after the
start, on a FakeClock) with the decisions expected of them; operator actions (ban, unban,
allow, disallow, refresh) can be interleaved. Adding a rule type adds a directory here, not test code.

events.yaml::

    description: what the case shows
    mode: monitor                # which mode decides whether a blocked request is observed
    defaults: {ip: 203.0.113.7, method: GET, ua: Mozilla/5.0, headers: [user-agent]}
    events:
      - at: 0
        path: /a{i}              # {i}: the repetition index
        repeat: 3                # optional, `every` seconds apart (default 1)
        status: 404              # the status observed (none: no response)
        expect: {block: false, tags: [probing], observed_tags: [...], bans: [...], ...}

`counts`/`observed_counts` are the rule hits a verdict reports (a rule reports once its count
is halfway to the threshold, or when it tags); `window` peeks at a rule's current count.
      - {at: 60, action: {ban: 10.0.0.0/8, ttl: 60}}
    expect_events: ["ban probing 203.0.113.7", ...]   # optional, in order
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxylog.config.reader import Node
from proxylog.config.rules import parse_rules
from proxylog.identity import TrustedProxies
from proxylog.record import Mode
from proxylog.rules import RequestFacts, RuleEngine, RuleEvent, Verdict
from proxylog.testing import FakeClock

CASES = Path(__file__).resolve().parents[1] / "data" / "rules"
START = 1_700_000_000.0
REQUEST_KEYS = {"ip", "method", "path", "query", "ua", "headers", "host"}


def _cases() -> list[Path]:
    return sorted(p for p in CASES.iterdir() if (p / "events.yaml").is_file())


def _load_engine(case: Path, clock: FakeClock, events: list[RuleEvent]) -> tuple[RuleEngine, TrustedProxies]:
    data = yaml.safe_load((case / "rules.yaml").read_text()) or {}
    allowed = {"rules", "intel", "allow", "trusted_proxies"}
    assert set(data) <= allowed, f"{case.name}/rules.yaml: only {', '.join(sorted(allowed))}"
    spec = parse_rules(
        Node(data["rules"], "rules") if "rules" in data else None,
        Node(data["intel"], "intel") if "intel" in data else None,
        Node(data["allow"], "allow") if "allow" in data else None,
        base_dir=case,
    )
    trusted = Node(data.get("trusted_proxies", []), "trusted_proxies").networks()
    return RuleEngine(spec, clock, listener=events.append), TrustedProxies(trusted)


def _facts(request: dict[str, Any], index: int, ts: float, trusted: TrustedProxies) -> RequestFacts:
    def text(value: Any) -> Any:
        return value.format(i=index) if isinstance(value, str) else value

    ua = text(request.get("ua"))
    headers = set(request.get("headers", []))
    if ua is not None:
        headers.add("user-agent")
    ip = text(request.get("ip", "203.0.113.7"))
    return RequestFacts(
        ts=ts,
        client_ip=ip,
        method=request.get("method", "GET"),
        path=text(request.get("path", "/")),
        query=text(request.get("query")),
        user_agent=ua,
        header_names=frozenset(headers),
        host=request.get("host", "app.example.com"),
        resolved=not trusted.is_trusted(ip),  # a trusted proxy as the client: no one behind it
    )


def _act(engine: RuleEngine, action: dict[str, Any]) -> None:
    actions = {
        "ban": lambda v: engine.ban(v, action.get("ttl", 60), reason="golden case"),
        "unban": engine.unban,
        "allow": engine.allow,
        "disallow": engine.disallow,
        "refresh": lambda v: engine.refresh(),
    }
    for name, value in action.items():
        if name in actions:
            actions[name](value)


def _check(
    where: str,
    expect: dict[str, Any],
    verdict: Verdict,
    observed: Verdict | None,
    engine: RuleEngine,
    client_ip: str,
) -> None:
    got: dict[str, Any] = {
        "block": verdict.block,
        "status": verdict.status,
        "retry_after": verdict.retry_after,
        "enforce": None if verdict.mode is None else verdict.mode == Mode.ENFORCE,
        "body": verdict.body,
        "tags": sorted(verdict.tags),
        "rules": sorted(hit.id for hit in verdict.rules),
        "counts": {hit.id: hit.count for hit in verdict.rules},
        "observed_tags": sorted(observed.tags) if observed is not None else [],
        "observed_counts": {hit.id: hit.count for hit in observed.rules} if observed is not None else {},
        "bans": sorted(ban.key for ban in engine.bans()),
    }
    if "window" in expect:
        got["window"] = {rule: engine.peek(rule, client_ip) for rule in expect["window"]}
    for key, want in expect.items():
        if key not in got:
            raise AssertionError(f"{where}: unknown expectation {key!r}")
        if key in ("tags", "rules", "observed_tags", "bans"):
            want = sorted(want)
        assert got[key] == want, f"{where}: {key} is {got[key]!r}, expected {want!r}"


@pytest.mark.parametrize("case", _cases(), ids=lambda p: p.name)
def test_golden_case(case: Path) -> None:
    """The engine makes exactly the decisions the case's events.yaml expects."""
    script = yaml.safe_load((case / "events.yaml").read_text())
    clock = FakeClock(script.get("start", START))
    events: list[RuleEvent] = []
    engine, trusted = _load_engine(case, clock, events)
    mode = Mode(script.get("mode", "monitor"))
    defaults = script.get("defaults", {})
    for number, event in enumerate(script["events"]):
        unknown = set(event) - REQUEST_KEYS - {"at", "repeat", "every", "status", "expect", "action", "note"}
        assert not unknown, f"{case.name} event {number}: unknown keys {unknown}"
        start = START + event["at"]
        if start < clock.now:
            raise AssertionError(f"{case.name} event {number}: `at` goes back in time")
        clock.now = start
        if "action" in event:
            _act(engine, event["action"])
            if "expect" in event:
                _check(f"{case.name} event {number}", event["expect"], Verdict(), None, engine, "")
            continue
        request = {**defaults, **{k: v for k, v in event.items() if k in REQUEST_KEYS}}
        repeat = event.get("repeat", 1)
        for index in range(repeat):
            clock.now = start + index * event.get("every", 1)
            facts = _facts(request, index, clock.now, trusted)
            verdict = engine.check(facts)
            enforced = verdict.enforced(mode)
            observed = None if enforced else engine.observe(facts, event.get("status"))
        if "expect" in event:
            _check(f"{case.name} event {number}", event["expect"], verdict, observed, engine, facts.client_ip)
    if "expect_events" in script:
        got = [f"{e.kind} {e.rule} {e.key}" for e in events]
        assert got == script["expect_events"]


def test_every_case_has_a_description() -> None:
    """Each golden case says in one sentence what it demonstrates."""
    for case in _cases():
        script = yaml.safe_load((case / "events.yaml").read_text())
        assert script.get("description"), case.name
