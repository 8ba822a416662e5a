"""Bans on top of the store's ban table: escalation for repeat offenders, lookup of a client
through every banned prefix, expiry, and the operator's ban/unban/restore."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable

from proxylog.config.rule_specs import EscalateSpec
from proxylog.rules.clients import Client, normalize_key
from proxylog.rules.types import Ban, RuleEvent
from proxylog.state import Store

# An operator's ban may cover at most a /8 of IPv4 or a /16 of IPv6 (`ctl ban 0.0.0.0/0`
# would block everyone).
WIDEST_MANUAL_BAN = {4: 8, 6: 16}

logger = logging.getLogger("proxylog")


class Bans:
    """The engine's view of bans. Every change is announced through `emit` (a RuleEvent)."""

    def __init__(self, store: Store, emit: Callable[[RuleEvent], None]) -> None:
        self.store = store
        self.emit = emit

    def __len__(self) -> int:
        return len(self.store.bans)

    def find(self, client: Client, now: float) -> Ban | None:
        """The active ban covering a client: its own address, or any banned network around it."""
        table = self.store.bans
        ban = table.get(client.ip)
        if ban is not None and ban.until > now:
            return ban
        if client.version:
            for prefix in table.prefixes(client.version):
                ban = table.get(client.net(prefix))
                if ban is not None and ban.until > now:
                    return ban
        return None

    def impose(
        self,
        rule: str,
        key: str,
        ttl: float,
        escalate: EscalateSpec | None,
        now: float,
        *,
        count: int,
        threshold: int,
        reason: str,
    ) -> tuple[Ban | None, bool]:
        """Ban `key` for `ttl`, escalated for repeat offenders, unless already banned (that
        ban is returned, not extended). Returns the ban (None if the table is full) and
        whether it is new."""
        table = self.store.bans
        current = table.get(key)
        if current is not None and current.until > now:
            return current, False
        offence = 1
        if escalate is not None:
            offence = self.store.offend(key, now, escalate.memory)
            ttl = min(ttl * escalate.factor ** (offence - 1), max(escalate.max, ttl))
        ban = Ban(key=key, rule=rule, since=now, until=now + ttl, count=offence, reason=reason)
        if not table.put(ban):
            logger.warning("ban table full: not banning %s (%s)", key, rule)
            return None, False
        self.emit(RuleEvent("ban", rule, key, now, count, threshold, ban.until))
        return ban, True

    def manual(self, key: str, ttl: float, rule: str, reason: str | None, now: float) -> Ban:
        """An operator's ban, replacing any ban of that key; raises ValueError for a bad key,
        a TTL that is not positive, or a full table."""
        if not ttl > 0:
            raise ValueError(f"a ban needs a positive TTL, got {ttl!r}")
        key = normalize_key(key)
        if "/" in key:
            net = ipaddress.ip_network(key)
            if net.prefixlen < WIDEST_MANUAL_BAN[net.version]:
                raise ValueError(
                    f"{key} is wider than /{WIDEST_MANUAL_BAN[net.version]}: "
                    "a ban that size would block most of the internet; ban narrower ranges"
                )
        ban = Ban(key=key, rule=rule, since=now, until=now + ttl, reason=reason)
        if not self.store.bans.put(ban):
            raise ValueError("the ban table is full")
        self.emit(RuleEvent("ban", rule, ban.key, now, until=ban.until))
        return ban

    def lift(self, key: str, now: float) -> bool:
        """Lift a ban; True if there was one. Raises ValueError for a bad key."""
        ban = self.store.bans.pop(normalize_key(key))
        if ban is None:
            return False
        self.emit(RuleEvent("unban", ban.rule, ban.key, now, ban.count, 0, ban.until))
        return True

    def restore(self, bans: Iterable[Ban], now: float) -> None:
        """Reinstate persisted bans (expired ones and bad keys are skipped)."""
        for ban in bans:
            if ban.until <= now:
                continue
            try:
                key = normalize_key(ban.key)
            except ValueError:
                logger.warning("not restoring a ban with a bad key: %r", ban.key)
                continue
            if key != ban.key:
                ban = Ban(key, ban.rule, ban.since, ban.until, ban.count, ban.reason)
            self.store.bans.put(ban)

    def expire(self, now: float) -> None:
        """Drop the bans that have run out, announcing each as an unban at its expiry time."""
        for ban in self.store.bans.expire(now):
            self.emit(RuleEvent("unban", ban.rule, ban.key, ban.until, ban.count, 0, ban.until))

    def active(self, now: float) -> list[Ban]:
        """Active bans, soonest expiry first."""
        return [ban for ban in self.store.bans.all() if ban.until > now]
