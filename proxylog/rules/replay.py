"""Replay: historical records and logs through the rules, offline (`proxylog replay`).

The record timestamps are the engine's clock (CrowdSec's time machine), so windows, bans
and their expiry play out as they would have live. Security teams use it to tune a rule
pack on their own traffic before enforcing it.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from proxylog.config.rule_specs import RulesSpec
from proxylog.record import Mode
from proxylog.rules.engine import RuleEngine
from proxylog.rules.sources import Entry
from proxylog.rules.types import RuleEvent
from proxylog.state.memory import MemoryStore


class ReplayClock:
    """The engine's clock during replay: the timestamp of the request being replayed."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(slots=True)
class ReplayReport:
    """What a replay saw and what the rules would have done."""

    requests: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    clients: set[str] = field(default_factory=set)
    events: list[RuleEvent] = field(default_factory=list)
    tagged: collections.Counter[str] = field(default_factory=collections.Counter)
    tagged_requests: int = 0
    would_block: int = 0
    blocked: int = 0
    rules: dict[str, Any] = field(default_factory=dict)


def replay(
    entries: Iterable[Entry],
    spec: RulesSpec,
    *,
    mode: Mode = Mode.MONITOR,
    sort: bool = True,
    on_event: Callable[[RuleEvent], None] | None = None,
    template: RuleEngine | None = None,
    trusted: Callable[[str], bool] | None = None,
) -> ReplayReport:
    """Run requests through a fresh engine with their timestamps as its clock. In enforce mode
    a request the verdict would block is not observed (as the proxy would not forward it).
    A `template` engine of the same spec lends its loaded intel lists (no state is shared);
    A client `trusted` says is a trusted proxy is unresolved, as live (the config's
    ``trusted_proxies``: pass `TrustedProxies.is_trusted`)."""
    report = ReplayReport()
    clock = ReplayClock()

    def listen(event: RuleEvent) -> None:
        report.events.append(event)
        if on_event is not None:
            on_event(event)

    store = MemoryStore() if template is not None else None
    engine = RuleEngine(spec, clock, listener=listen, previous=template, store=store)
    ordered = sorted(entries, key=lambda e: e.facts.ts) if sort else entries
    for entry in ordered:
        facts = entry.facts
        if trusted is not None and trusted(facts.client_ip):
            facts = dataclasses.replace(facts, resolved=False)
        clock.now = facts.ts
        report.requests += 1
        report.first_ts = facts.ts if report.first_ts is None else report.first_ts
        report.last_ts = facts.ts
        report.clients.add(facts.client_ip)
        verdict = engine.check(facts)
        tags = set(verdict.tags)
        enforced = verdict.enforced(mode)
        if verdict.block:
            report.would_block += 1
        if enforced:
            report.blocked += 1
        else:
            tags.update(engine.observe(facts, entry.status).tags)
        report.tagged.update(tags)
        report.tagged_requests += bool(tags)
    if report.last_ts is not None:
        clock.now = report.last_ts
    report.rules = {rule_id: asdict(counts) for rule_id, counts in engine.stats().rules.items()}
    return report


def duration(seconds: float) -> str:
    """``90`` → ``1m30s``; ``3600`` → ``1h``: the shortest readable form."""
    seconds = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


