"""The rule engine: detects, and decides what enforcement would do. PLACEHOLDER API.

This module fixes the interface the addon, replay and the control plane use; the engine
behind it is filled in by the rules issue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from proxylog.config.rules import RulesSpec
from proxylog.record import RuleHit


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the engine sees of a request: built by the addon, or by replay from old logs.

    Strings are log-safe text (never raw bytes); `path` and `query` are as received, not
    percent-decoded; `header_names` are lower-case.
    """

    ts: float
    client_ip: str
    method: str
    path: str
    query: str | None
    user_agent: str | None
    header_names: frozenset[str]
    host: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The engine's conclusion for one request.

    `block` is what enforcement would do. The addon blocks only in enforce mode, unless
    `enforce` overrides the global mode for this verdict (a rule's own `mode:`). `tags` go
    into the record and, at request time, to Puma in ``X-Proxylog-Tags``.
    """

    block: bool = False
    status: int = 403
    retry_after: int | None = None
    enforce: bool | None = None
    tags: tuple[str, ...] = ()
    rules: tuple[RuleHit, ...] = ()
    reason: str | None = None
    body: str | None = None


NO_VERDICT = Verdict()


@dataclass(frozen=True, slots=True)
class Ban:
    """An active ban. `key` is an IP or a CIDR (a client network key)."""

    key: str
    rule: str
    since: float
    until: float
    count: int = 1
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RuleEvent:
    """Something an operator may want alerted: a rule first firing for a key, a ban."""

    kind: Literal["rule_fired", "ban", "unban"]
    rule: str
    key: str
    ts: float
    count: int = 0
    threshold: int = 0
    until: float | None = None


class RuleEngine:
    """check() runs at request headers (allowlist, bans, intel, request-time rules); observe()
    runs once the response status is known (status rules) and may ban for the next request.
    Both are synchronous, O(rules) and never do I/O.

    `previous` carries state across a config reload: bans always, counters for rules whose
    spec did not change. `listener` receives RuleEvents (for alerts and audit).
    """

    def __init__(
        self,
        spec: RulesSpec,
        clock: Callable[[], float] = time.time,
        *,
        previous: RuleEngine | None = None,
        listener: Callable[[RuleEvent], None] | None = None,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.listener = listener

    @property
    def enabled(self) -> bool:
        """False when there is nothing to evaluate: the addon then skips building facts."""
        return False

    def check(self, facts: RequestFacts) -> Verdict:
        return NO_VERDICT

    def observe(self, facts: RequestFacts, status: int | None) -> Verdict:
        return NO_VERDICT

    def bans(self) -> list[Ban]:
        """Active bans, soonest expiry first."""
        return []

    def ban(self, key: str, ttl: float, rule: str = "manual", reason: str | None = None) -> Ban:
        """Ban an IP or CIDR now (operator action); raises ValueError for a bad key."""
        raise ValueError("bans are not supported yet")

    def unban(self, key: str) -> bool:
        """Lift a ban; True if there was one."""
        return False

    def restore_bans(self, bans: list[Ban]) -> None:
        """Reinstate persisted bans after a restart (expired ones are ignored)."""

    def allowlist(self) -> list[str]:
        """Allowlisted CIDRs: the config's plus those added at runtime."""
        return [str(net) for net in self.spec.allow]

    def allow(self, cidr: str) -> None:
        """Allowlist a CIDR at runtime; raises ValueError for a bad CIDR."""
        raise ValueError("runtime allowlisting is not supported yet")

    def disallow(self, cidr: str) -> bool:
        """Remove a runtime allowlist entry; True if it was there."""
        return False

    def refresh(self) -> None:
        """Reload threat-intel files whose refresh interval has passed (blocking file reads:
        call it off the event loop)."""

    def stats(self) -> dict[str, object]:
        """Counters for metrics: rule hits per rule id, active bans, intel list sizes."""
        return {}
