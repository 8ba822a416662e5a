"""RuleSpec → CompiledRule: matchers, key functions and counters resolved once per config."""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import orjson

from proxylog.config.rule_specs import PatternField, RuleSpec
from proxylog.rules.clients import KeyFunc, build_keys
from proxylog.rules.matchers import DISTINCT_VALUE, Match, Scan, Scanner
from proxylog.state import Counter, CounterSpec, Store


class CompiledRule:
    """A rule ready for the hot path: its matches, keys, counters (own key, then tier) and
    the parts of its verdict that never change."""

    __slots__ = (
        "action",
        "ban",
        "body",
        "counter_names",
        "counters",
        "flags",
        "id",
        "inspect",
        "keys",
        "member",
        "mode",
        "per_client",
        "rate",
        "spec",
        "status",
        "tag_matches",
        "tags",
        "threshold",
        "thresholds",
        "unless",
        "when",
        "window",
    )

    def __init__(self, spec: RuleSpec, when: Match | None, unless: Match | None, store: Store) -> None:
        self.spec = spec
        self.id = spec.id
        self.when = when
        self.unless = unless
        self.inspect = when.inspect if when is not None else None  # tags the families it finds
        self.keys: KeyFunc = build_keys(spec.key)
        self.per_client = spec.key.kind != "global"  # counts per client or network: never a proxy
        member: Callable[[Any], str] | None = DISTINCT_VALUE[spec.distinct] if spec.distinct else None
        self.member = member
        self.threshold = spec.threshold
        self.window = spec.window
        self.tags = spec.tags
        self.tag_matches = spec.tag_matches
        self.action = spec.action
        self.ban = spec.ban
        self.mode = spec.mode
        self.status = spec.response.status
        self.body = spec.response.body
        self.rate = self.status == 429
        # A response-time tag rule marks the client so its next requests carry the tag to Puma.
        self.flags = spec.phase == "response" and spec.action == "tag" and spec.key.kind != "global"
        tiered = spec.key.tier_v4 is not None or spec.key.tier_v6 is not None
        thresholds = [spec.threshold] + ([spec.threshold * spec.key.tier_factor] if tiered else [])
        self.thresholds = tuple(thresholds)
        digest = fingerprint(spec)
        names = [f"{spec.id}:{digest}"] + ([f"{spec.id}:{digest}:tier"] if tiered else [])
        self.counter_names = tuple(names)
        self.counters: tuple[Counter, ...] = tuple(
            store.counter(name, _counter_spec(spec, limit))
            for name, limit in zip(names, thresholds, strict=True)
        )

    @property
    def retry_after(self) -> int:
        """Seconds a rate-limited client should wait when no ban says otherwise: the window."""
        return max(1, math.ceil(self.window))


Matches = tuple[tuple[Match | None, Match | None], ...]


@functools.lru_cache(maxsize=16)
def compile_matches(rules: tuple[RuleSpec, ...]) -> tuple[Scanner, Matches]:
    """The scanner and each rule's (when, unless) matches: compiled once per rule set and
    shared by every engine built from it (re2 sets are immutable and thread-safe to match)."""
    scanner = Scanner()
    matches = tuple(
        (
            Match(rule.when, scanner) if rule.when else None,
            Match(rule.unless, scanner) if rule.unless else None,
        )
        for rule in rules
    )
    scanner.compile()
    return scanner, matches


def _counter_spec(spec: RuleSpec, threshold: int) -> CounterSpec:
    return CounterSpec(
        window=spec.window,
        precision=spec.precision,
        distinct=spec.distinct is not None,
        cap=threshold,
        max_keys=spec.max_keys,
    )


def fingerprint(spec: RuleSpec) -> str:
    """A digest of the spec that is stable across processes (sets sorted), naming its counters
    so that only an unchanged rule keeps its counts over a reload."""
    canonical = orjson.dumps(asdict(spec), default=_sorted, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha1(canonical, usedforsecurity=False).hexdigest()[:12]


def _sorted(value: object) -> list[Any]:
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(type(value).__name__)


class RequestIndex:
    """Which request-time rules can match a request, from its field scans: a rule is filed
    under the pattern ids of its first pattern condition, so a request that hits no pattern
    only evaluates the rules without one (rate limits, header rules, an empty User-Agent)."""

    def __init__(self, rules: list[CompiledRule]) -> None:
        self._order = {id(rule): n for n, rule in enumerate(rules)}
        always: list[CompiledRule] = []
        tables: dict[PatternField, dict[int, list[CompiledRule]]] = {}
        for rule in rules:
            first = rule.when.patterns[0] if rule.when is not None and rule.when.patterns else None
            if first is None or first[2]:  # no pattern, or `user_agent: ""` also matches without one
                always.append(rule)
                continue
            field, ids, _ = first
            for pattern_id in ids:
                tables.setdefault(field, {}).setdefault(pattern_id, []).append(rule)
        self.always = tuple(always)
        self._tables = tuple(
            (field, {k: tuple(v) for k, v in table.items()}) for field, table in tables.items()
        )

    def __bool__(self) -> bool:
        return bool(self.always or self._tables)

    def candidates(self, scan: Scan) -> tuple[CompiledRule, ...]:
        """The rules worth evaluating for this request, in config order."""
        extra: set[CompiledRule] | None = None
        for field, table in self._tables:
            for pattern_id in scan.hits(field):
                rules = table.get(pattern_id)
                if rules:
                    extra = set(rules) if extra is None else extra.union(rules)
        if extra is None:
            return self.always
        return tuple(sorted(extra.union(self.always), key=lambda r: self._order[id(r)]))


class ResponseIndex:
    """Which response-time rules can match a status: a dict lookup, so the 2xx/3xx majority
    costs nothing when the rules are about errors."""

    def __init__(self, rules: list[CompiledRule]) -> None:
        always = [r for r in rules if r.when is None or r.when.statuses is None]
        self._none = tuple(always)
        self._by_status: dict[int, tuple[CompiledRule, ...]] = {}
        for status in range(100, 600):
            matching = [
                r for r in rules if r in always or (r.when is not None and status in (r.when.statuses or ()))
            ]
            if matching:
                self._by_status[status] = tuple(matching)

    def __bool__(self) -> bool:
        return bool(self._by_status or self._none)

    def candidates(self, status: int | None) -> tuple[CompiledRule, ...]:
        """The rules worth evaluating for this status, in config order."""
        if status is None:
            return self._none
        return self._by_status.get(status, self._none)
