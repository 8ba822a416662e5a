"""Rule, intel and allowlist specs (``rules:``, ``intel:``, ``allow:``). Placeholder."""

from __future__ import annotations

from dataclasses import dataclass

from proxylog.config._reader import IPNetwork, Node


@dataclass(frozen=True, slots=True)
class RulesSpec:
    """Everything the rule engine is compiled from."""

    allow: tuple[IPNetwork, ...] = ()


def parse_rules(rules: Node | None, intel: Node | None, allow: Node | None) -> RulesSpec:
    if rules is not None:
        rules.fail("rules are not supported yet")
    if intel is not None:
        intel.fail("intel lists are not supported yet")
    return RulesSpec(allow=allow.networks() if allow is not None else ())
