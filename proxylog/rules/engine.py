"""The rule engine: allowlist, bans, threat intel and threshold rules, for every request.

`check` (request headers) and `observe` (response status known) are synchronous, O(rules)
and never do I/O; the only clock they read is the injected one. The engine only decides:
whether a block is enforced depends on the live mode (`Verdict.enforced`).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from cachetools import LRUCache

from proxylog.config.rule_specs import PatternField, RuleSpec, RulesSpec
from proxylog.errors import ConfigError
from proxylog.net import CidrSet, unmap_network
from proxylog.record import Mode, RuleHit, format_timestamp
from proxylog.rules.bans import Bans
from proxylog.rules.clients import Client, normalize_key
from proxylog.rules.compiled import CompiledRule, RequestIndex, ResponseIndex, compile_matches
from proxylog.rules.inspect import InspectCondition
from proxylog.rules.intel import IntelList
from proxylog.rules.matchers import PatternSetError, Scan
from proxylog.rules.outcome import Outcome, RuleStats
from proxylog.rules.types import NO_VERDICT, Ban, RequestFacts, RuleEvent, Verdict
from proxylog.state import Store
from proxylog.state.memory import MemoryStore

logger = logging.getLogger("proxylog")

CLIENT_CACHE = 65_536  # parsed client addresses kept (allowlist and intel results with them)
MAX_FLAGGED = 100_000  # clients carrying a tag from a response-time rule
MAX_EPISODES = 100_000  # (rule, key) pairs remembered as "already fired" for events
SWEEP_INTERVAL = 1.0  # seconds between looks for expired bans
UNRESOLVED_TAG = "unresolved-client"


class RuleEngine:
    """check() runs at request headers (allowlist, bans, intel, request-time rules); observe()
    runs once the response status is known (status rules) and may ban for the next request.
    Both are synchronous, O(rules) and never do I/O.

    `previous` carries state across a config reload: bans always, counters for rules whose
    spec did not change. `listener` receives RuleEvents (for alerts and audit); it is called
    on the request path, so it must be quick and must not block. `store` replaces the
    in-process store (a shared backend). Raises ConfigError when an intel file cannot load
    or the rules' patterns cannot be compiled.
    """

    def __init__(
        self,
        spec: RulesSpec,
        clock: Callable[[], float] = time.time,
        *,
        previous: RuleEngine | None = None,
        listener: Callable[[RuleEvent], None] | None = None,
        store: Store | None = None,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.listener = listener
        now = clock()
        self.store: Store = store or (previous.store if previous is not None else MemoryStore())
        _check_inspect(spec)
        try:
            self._scanner, matches = compile_matches(spec.rules)
        except PatternSetError as e:
            users = [rule.id for rule in spec.rules if e.field in _pattern_fields(rule)]
            raise ConfigError("rules", f"{e} (rules {', '.join(users)}): shorten or split them") from e
        rules = [
            CompiledRule(rule, when, unless, self.store)
            for rule, (when, unless) in zip(spec.rules, matches, strict=True)
        ]
        self.store.retain(name for rule in rules for name in rule.counter_names)
        self._rules = {rule.id: rule for rule in rules}
        self._request_rules = RequestIndex([r for r in rules if r.spec.phase == "request"])
        self._response_rules = ResponseIndex([r for r in rules if r.spec.phase == "response"])
        self._has_request_rules = bool(self._request_rules)
        # Rules that inspect bodies run again once a buffered body is in (`check_body`).
        self._body_rules = tuple(
            r
            for r in rules
            if r.inspect is not None and r.inspect.body_limit > 0 and r.spec.phase == "request"
        )
        self.inspects = any(r.inspect is not None for r in rules) or any(
            r.unless is not None and r.unless.inspect is not None for r in rules
        )
        self.body_limit = max((r.inspect.body_limit for r in self._body_rules if r.inspect), default=0)
        # Per-rule counts are Prometheus counters: they carry over a reload for every rule id
        # kept, with the counters' store (a replay borrowing a template's intel shares nothing).
        same_store = previous is not None and previous.store is self.store
        kept: dict[str, RuleStats] = previous._stats if previous is not None and same_store else {}
        self._stats: dict[str, RuleStats] = {rule.id: kept.get(rule.id) or RuleStats() for rule in rules}
        self._bans = Bans(self.store, self._emit)
        self._intel = self._load_intel(spec, now, previous)
        self._runtime_allow: list[str] = list(previous._runtime_allow) if previous is not None else []
        self._allow = self._build_allow()
        self._generation = 0
        self._clients: Callable[[str], Client] = functools.lru_cache(maxsize=CLIENT_CACHE)(Client)
        # Flags and episodes belong with the counters: carried only when the store is.
        self._flags: LRUCache[str, dict[str, tuple[float, tuple[str, ...]]]] = (
            previous._flags if previous is not None and same_store else LRUCache(maxsize=MAX_FLAGGED)
        )
        self._episodes: LRUCache[tuple[str, str], float] = (
            previous._episodes if previous is not None and same_store else LRUCache(maxsize=MAX_EPISODES)
        )
        self._next_sweep = -math.inf
        self._checks = 0
        self._observes = 0

    @staticmethod
    def _load_intel(spec: RulesSpec, now: float, previous: RuleEngine | None) -> list[IntelList]:
        loaded = {lst.spec.name: lst for lst in previous._intel} if previous is not None else {}
        lists = []
        for intel in spec.intel:
            try:
                lists.append(IntelList(intel, now, loaded.get(intel.name)))
            except (OSError, ValueError) as e:
                raise ConfigError(f"intel.{intel.name}.file", f"cannot load {intel.file!r}: {e}") from e
        return lists

    def _build_allow(self) -> CidrSet:
        runtime = [ipaddress.ip_network(cidr) for cidr in self._runtime_allow]
        return CidrSet(unmap_network(net) for net in [*self.spec.allow, *runtime])

    @property
    def enabled(self) -> bool:
        """False when there is nothing to evaluate: the addon then skips building facts."""
        return bool(self._rules or self._intel or len(self._bans))

    def _client(self, ip: str) -> Client:
        client = self._clients(ip)
        if client.generation != self._generation:
            self._classify(client)
        return client

    def _classify(self, client: Client) -> None:
        generation = self._generation  # read first: a concurrent refresh then forces a redo
        client.allowed = bool(client.version) and self._allow.contains(client.version, client.value)
        client.intel = tuple(
            index
            for index, lst in enumerate(self._intel)
            if client.version
            and lst.cidrs.contains(client.version, client.value)
            and (lst.spec.include_private or client.public)
        )
        client.generation = generation

    def check(self, facts: RequestFacts) -> Verdict:
        """The request-time verdict: allowlisted → nothing; else an active ban, intel lists,
        tags from earlier responses, then request-time rules (which count this request).

        An unresolved client (`facts.resolved` False: a trusted proxy whose X-Forwarded-For
        was missing or named no address) is tagged `unresolved-client` and only `key: global`
        rules apply: counting, blocking or banning it would do so to everyone behind the proxy."""
        client = self._client(facts.client_ip)
        if client.allowed:
            return NO_VERDICT
        now = self.clock()
        self._checks += 1
        if now >= self._next_sweep:
            self._sweep(now)
        out: Outcome | None
        if not facts.resolved:
            out = Outcome()
            out.tags.append(UNRESOLVED_TAG)
        else:
            out = self._standing(client, now)
        if self._has_request_rules:
            scan = Scan(self._scanner, facts)
            for rule in self._request_rules.candidates(scan):
                if _counts(rule, client, facts, None, scan):
                    out = self._count(rule, facts, client, now, out, request_time=True, scan=scan)
        return NO_VERDICT if out is None else out.verdict()

    def check_body(self, facts: RequestFacts, body: bytes, content_type: str | None) -> Verdict:
        """The verdict of the body-inspecting rules once a buffered body is in: a rule counts
        the request here only if the body makes it match (it did not at `check`). Bodies over
        `body_limit` are not inspected. Synchronous, no I/O."""
        if not self._body_rules or not body or len(body) > self.body_limit or not facts.resolved:
            return NO_VERDICT
        client = self._client(facts.client_ip)
        if client.allowed:
            return NO_VERDICT
        now = self.clock()
        full = dataclasses.replace(facts, body=body, content_type=content_type)
        head, scan = Scan(self._scanner, facts), Scan(self._scanner, full)
        out: Outcome | None = None
        for rule in self._body_rules:
            if _counts(rule, client, full, None, scan) and not _counts(rule, client, facts, None, head):
                out = self._count(rule, full, client, now, out, request_time=True, scan=scan)
        return NO_VERDICT if out is None else out.verdict()

    def _standing(self, client: Client, now: float) -> Outcome | None:
        """What the client brings before this request counts: an active ban, intel lists,
        tags from earlier responses."""
        out: Outcome | None = None
        if len(self._bans):
            ban = self._bans.find(client, now)
            if ban is not None:
                out = Outcome()
                self._apply_ban(out, ban, now)
        if client.intel:
            out = out or Outcome()
            for index in client.intel:
                self._apply_intel(out, self._intel[index])
        if self._flags:
            marks = self._flags.get(client.ip)
            if marks:
                out = out or Outcome()
                self._apply_flags(out, marks, now)
        return out

    def observe(self, facts: RequestFacts, status: int | None) -> Verdict:
        """The verdict once the client's status is known (None: it got no response): status
        rules count it, tag the record, and may ban the key for its next requests. Only
        `key: global` rules count an unresolved client."""
        candidates = self._response_rules.candidates(status)
        if not candidates:
            return NO_VERDICT
        client = self._client(facts.client_ip)
        if client.allowed:
            return NO_VERDICT
        now = self.clock()
        self._observes += 1
        out: Outcome | None = None
        scan = Scan(self._scanner, facts)
        for rule in candidates:
            if _counts(rule, client, facts, status, scan):
                out = self._count(rule, facts, client, now, out, request_time=False, scan=scan)
        if out is None:
            return NO_VERDICT
        return Verdict(tags=tuple(dict.fromkeys(out.tags)), rules=tuple(out.hits))

    def _count(
        self,
        rule: CompiledRule,
        facts: RequestFacts,
        client: Client,
        now: float,
        out: Outcome | None,
        *,
        request_time: bool,
        scan: Scan | None = None,
    ) -> Outcome | None:
        """Count a matching request for every key of the rule; fire at the threshold. The hit
        is reported once the count is halfway there (or the request is tagged). An inspection
        rule always reports its hit, with the score, the ids and `attack-<family>` tags."""
        stats = self._stats[rule.id]
        if rule.inspect is not None and scan is not None:
            found = rule.inspect.result(scan.inspection())
            out = out or Outcome()
            out.tags.extend(f"attack-{family}" for family in found.families)
            score: int | None = found.score
            matched, families = tuple(map(str, found.ids)), found.families
        else:
            score, matched, families = None, (), ()
        stats.matched += 1
        member = rule.member(facts) if rule.member is not None else None
        own = 0
        fired: tuple[str, int, int] | None = None
        for key, counter, threshold in zip(rule.keys(client), rule.counters, rule.thresholds, strict=False):
            count = counter.add(key, now, member)
            if not own:
                own = count
            if fired is None and count >= threshold:
                fired = (key, count, threshold)
        if fired is None:
            if rule.tag_matches:
                out = out or Outcome()
                out.tags.extend(rule.tags)
            elif own * 2 < rule.threshold and score is None:
                return out
            out = out or Outcome()
            out.hits.append(RuleHit(rule.id, own, rule.threshold, rule.window, score, matched, families))
            return out
        out = out or Outcome()
        out.hits.append(RuleHit(rule.id, own, rule.threshold, rule.window, score, matched, families))
        key, count, threshold = fired
        stats.fired += 1
        out.tags.extend(rule.tags)
        self._episode(rule, key, count, threshold, now)
        if rule.action == "tag":
            if rule.flags:
                self._flag(client.ip, rule, now)
            return out
        reason = f"{rule.id}: {count} ≥ {threshold} in {rule.window:g}s"
        ban = None
        if rule.ban is not None:
            ban, new = self._bans.impose(
                rule.id,
                key,
                rule.ban,
                rule.spec.escalate,
                now,
                count=count,
                threshold=threshold,
                reason=reason,
            )
            stats.bans += new
        if request_time:
            retry = math.ceil(ban.until - now) if ban is not None else rule.retry_after
            out.block(rule.mode, rule.status, max(1, retry), rule.body, reason)
        return out

    def _episode(self, rule: CompiledRule, key: str, count: int, threshold: int, now: float) -> None:
        """Emit `rule_fired` once per episode: until the rule stops firing for a window."""
        slot = (rule.id, key)
        until = self._episodes.get(slot)
        self._episodes[slot] = now + rule.window
        if until is None or now >= until:
            self._emit(RuleEvent("rule_fired", rule.id, key, now, count, threshold))

    def _flag(self, ip: str, rule: CompiledRule, now: float) -> None:
        marks = self._flags.get(ip)
        if marks is None:
            marks = self._flags[ip] = {}
        marks[rule.id] = (now + rule.window, rule.tags)

    @staticmethod
    def _apply_flags(out: Outcome, marks: dict[str, tuple[float, tuple[str, ...]]], now: float) -> None:
        for rule_id, (until, tags) in list(marks.items()):
            if until > now:
                out.tags.extend(tags)
            else:
                del marks[rule_id]

    def _apply_ban(self, out: Outcome, ban: Ban, now: float) -> None:
        rule = self._rules.get(ban.rule)
        out.tags.extend(rule.tags if rule is not None else ("banned",))
        reason = f"banned {ban.key} ({ban.rule}) until {format_timestamp(ban.until)}"
        out.ban_rule = ban.rule
        out.block(
            rule.mode if rule is not None else None,
            rule.status if rule is not None else 403,
            max(1, math.ceil(ban.until - now)),
            rule.body if rule is not None else None,
            reason,
        )

    @staticmethod
    def _apply_intel(out: Outcome, lst: IntelList) -> None:
        lst.hits += 1
        spec = lst.spec
        out.tags.extend(spec.tags)
        out.hits.append(RuleHit(spec.name, 1, 1, 0.0))
        if spec.action == "block":
            out.block(spec.mode, spec.response.status, None, spec.response.body, f"on intel list {spec.name}")

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_INTERVAL
        self._bans.expire(now)

    def _emit(self, event: RuleEvent) -> None:
        if self.listener is None:
            return
        try:
            self.listener(event)
        except Exception:
            logger.exception("rule event listener failed on %s", event.kind)

    def peek(self, rule_id: str, client_ip: str) -> int:
        """A rule's current count for a client's own key, counting nothing; raises KeyError for
        an unknown rule. For operators and tests: what the next request would be added to."""
        rule = self._rules[rule_id]
        keys = rule.keys(self._client(client_ip))
        return rule.counters[0].peek(keys[0], self.clock())

    def ban_enforced(self, ip: str, live: Mode) -> bool:
        """Whether an active ban covers `ip` (not allowlisted) and is enforced under the `live`
        mode: what a plane asks of a client's open connections when a ban is imposed."""
        if not len(self._bans):
            return False
        client = self._client(ip)
        if client.allowed:
            return False
        ban = self._bans.find(client, self.clock())
        if ban is None:
            return False
        rule = self._rules.get(ban.rule)
        return ((rule.mode if rule is not None else None) or live) == Mode.ENFORCE

    def bans(self) -> list[Ban]:
        """Active bans, soonest expiry first."""
        return self._bans.active(self.clock())

    def ban(self, key: str, ttl: float, rule: str = "manual", reason: str | None = None) -> Ban:
        """Ban an IP or CIDR now (operator action), replacing any ban of that key; raises
        ValueError for a bad key, a TTL that is not positive, or a full ban table."""
        return self._bans.manual(key, ttl, rule, reason, self.clock())

    def unban(self, key: str) -> bool:
        """Lift a ban; True if there was one. Raises ValueError for a bad key."""
        return self._bans.lift(key, self.clock())

    def restore_bans(self, bans: Iterable[Ban]) -> None:
        """Reinstate persisted bans after a restart (expired ones and bad keys are ignored)."""
        self._bans.restore(bans, self.clock())

    def allowlist(self) -> list[str]:
        """Allowlisted CIDRs: the config's plus those added at runtime."""
        return [str(net) for net in self.spec.allow] + list(self._runtime_allow)

    def allow(self, cidr: str, *, share: bool = True) -> bool:
        """Allowlist a CIDR at runtime (and, with `share`, on every instance of a shared
        store); True if it is new. Raises ValueError for a bad CIDR."""
        key = normalize_key(cidr)
        net = str(ipaddress.ip_network(key))
        if net in self._runtime_allow:
            return False
        self._runtime_allow.append(net)
        self._allow = self._build_allow()
        self._generation += 1
        if share:
            self.store.announce("allow", net)
        return True

    def disallow(self, cidr: str, *, share: bool = True) -> bool:
        """Remove a runtime allowlist entry; True if it was there. Raises ValueError for a bad CIDR."""
        net = str(ipaddress.ip_network(normalize_key(cidr)))
        if net not in self._runtime_allow:
            return False
        self._runtime_allow.remove(net)
        self._allow = self._build_allow()
        self._generation += 1
        if share:
            self.store.announce("disallow", net)
        return True

    def refresh(self) -> None:
        """Reload threat-intel files whose refresh interval has passed (blocking file reads:
        call it off the event loop)."""
        now = self.clock()
        changed = [lst.refresh(now) for lst in self._intel]
        if any(changed):
            self._generation += 1

    def stats(self) -> EngineStats:
        """Counters for metrics and `ctl stats`: per-rule detail (matched, fired, bans, keys
        tracked), active and refused bans, intel list sizes."""
        return EngineStats(
            checks=self._checks,
            observes=self._observes,
            rules={
                rule_id: RuleCounts(
                    stats.matched, stats.fired, stats.bans, sum(map(len, self._rules[rule_id].counters))
                )
                for rule_id, stats in self._stats.items()
            },
            active_bans=len(self.bans()),
            refused_bans=getattr(self.store.bans, "refused", 0),
            intel={lst.spec.name: lst.stats() for lst in self._intel},
            allowlist=len(self.allowlist()),
        )


@dataclass(frozen=True, slots=True)
class RuleCounts:
    """One rule's counters: requests it matched, times it fired, bans it made, keys tracked."""

    matched: int
    fired: int
    bans: int
    keys: int


@dataclass(frozen=True, slots=True)
class EngineStats:
    """The engine's counters at one moment (`RuleEngine.stats`)."""

    checks: int
    observes: int
    rules: dict[str, RuleCounts]
    active_bans: int
    refused_bans: int
    intel: dict[str, Any]
    allowlist: int

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape `ctl stats` shows."""
        return {
            "checks": self.checks,
            "observes": self.observes,
            "rule_hits": {rule_id: counts.matched for rule_id, counts in self.rules.items()},
            "rules": {rule_id: asdict(counts) for rule_id, counts in self.rules.items()},
            "bans": {"active": self.active_bans, "refused": self.refused_bans},
            "intel": self.intel,
            "allowlist": self.allowlist,
        }


def _counts(rule: CompiledRule, client: Client, facts: RequestFacts, status: int | None, scan: Scan) -> bool:
    """Whether `rule` counts this request: `when` holds, `unless` does not, and its key can
    count the client (only a global key counts an unresolved one)."""
    if rule.per_client and not facts.resolved:
        return False
    if rule.when is not None and not rule.when(facts, status, scan):
        return False
    return rule.unless is None or not rule.unless(facts, status, scan)


def _check_inspect(spec: RulesSpec) -> None:
    """Every id an `inspect:` condition excludes must be in the catalog."""
    for rule in spec.rules:
        for part, match in (("when", rule.when), ("unless", rule.unless)):
            if match.inspect is None:
                continue
            try:
                InspectCondition(match.inspect)
            except ValueError as e:
                raise ConfigError(f"rules.{rule.id}.{part}.inspect.exclude_ids", str(e)) from e


def _pattern_fields(rule: RuleSpec) -> set[PatternField]:
    return {name for name, _ in (*rule.when.patterns, *rule.unless.patterns)}
