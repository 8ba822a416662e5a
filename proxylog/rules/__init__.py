"""The rule engine: detects, and decides what enforcement would do.

`RuleEngine.check` runs at request headers and `RuleEngine.observe` once the response status
is known; the addon enforces (or not) what they conclude. Rules, intel and the allowlist
come from `RulesSpec` (``rules:``, ``intel:``, ``allow:`` in the config).
"""

from __future__ import annotations

from proxylog.rules.engine import RuleEngine
from proxylog.rules.outcome import RuleStats
from proxylog.rules.types import NO_VERDICT, Ban, RequestFacts, RuleEvent, RuleHit, Verdict

__all__ = [
    "NO_VERDICT",
    "Ban",
    "RequestFacts",
    "RuleEngine",
    "RuleEvent",
    "RuleHit",
    "RuleStats",
    "Verdict",
]
