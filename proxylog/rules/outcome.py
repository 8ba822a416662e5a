"""A verdict being assembled from the contributions of bans, intel lists and rules."""

from __future__ import annotations

from dataclasses import dataclass

from proxylog.record import Mode, RuleHit
from proxylog.rules.types import Verdict

_RETRY_STATUSES = frozenset({429, 503})
# How sure a block is to be enforced: a monitor-only rule, the live mode, an enforcing rule.
_RANK: dict[Mode | None, int] = {Mode.MONITOR: 0, None: 1, Mode.ENFORCE: 2}
_UNRANK = {rank: mode for mode, rank in _RANK.items()}


@dataclass(slots=True)
class RuleStats:
    """How often a rule matched, reached its threshold, and banned."""

    matched: int = 0
    fired: int = 0
    bans: int = 0


class Outcome:
    """A verdict being assembled. Of the contributions that would block, the one most sure to
    be enforced wins (a rule forcing enforce, then the live mode, then monitor-only rules)."""

    __slots__ = ("ban_rule", "body", "hits", "rank", "reason", "retry_after", "status", "tags")

    def __init__(self) -> None:
        self.tags: list[str] = []
        self.hits: list[RuleHit] = []
        self.rank = -1
        self.status = 403
        self.retry_after: int | None = None
        self.body: str | None = None
        self.reason: str | None = None
        self.ban_rule: str | None = None

    def block(
        self, mode: Mode | None, status: int, retry_after: int | None, body: str | None, reason: str
    ) -> None:
        """Offer a block; it replaces the current one only if more sure to be enforced."""
        rank = _RANK[mode]
        if rank > self.rank:
            self.rank, self.status, self.body, self.reason = rank, status, body, reason
            self.retry_after = retry_after if status in _RETRY_STATUSES else None

    def verdict(self) -> Verdict:
        """The finished verdict (tags deduplicated, in the order they came)."""
        blocked = self.rank >= 0
        return Verdict(
            block=blocked,
            status=self.status,
            retry_after=self.retry_after,
            mode=_UNRANK[self.rank] if blocked else None,
            tags=tuple(dict.fromkeys(self.tags)),
            rules=tuple(self.hits),
            reason=self.reason,
            body=self.body,
            ban_rule=self.ban_rule,
        )
