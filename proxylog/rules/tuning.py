"""Inspection tuning for replay: per family, the requests that reach the threshold at the
configured paranoia level and at another one, and the values the rules only the higher
level has matched (`proxylog replay --inspect-paranoia N`)."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from proxylog.config.rule_specs import InspectSpec, RulesSpec
from proxylog.rules.inspect import INFO, NAMES, InspectCondition, inspector_for
from proxylog.rules.inspect.explain import Matched, explain
from proxylog.rules.sources import Entry

TOP_VALUES = 5


@dataclass(slots=True)
class FamilyTally:
    """One family: requests at the configured level (`base`), at the other (`other`), those
    only the higher level tags (`added`), and the values its extra rules matched."""

    base: int = 0
    other: int = 0
    added: int = 0
    values: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass(slots=True)
class TuningReport:
    """What inspection at `base` (the configured rule's level; 0 when no rule inspects) and
    at `other` tag in the same requests."""

    rule: str | None
    base: int
    other: int
    threshold: int
    requests: int = 0
    base_hits: int = 0
    other_hits: int = 0
    families: dict[str, FamilyTally] = field(default_factory=dict)

    def top(self, family: str) -> list[tuple[str, int]]:
        """The values of a family the higher level's extra rules matched, most frequent first:
        ``<rule id> <part>:<name> <value>``, or ``<rule id> (<rule name>)`` for a check."""
        return self.families[family].values.most_common(TOP_VALUES)


def configured(spec: RulesSpec) -> tuple[str | None, InspectSpec | None]:
    """The first rule whose condition inspects, and its `inspect:` spec."""
    for rule in spec.rules:
        if rule.when is not None and rule.when.inspect is not None:
            return rule.id, rule.when.inspect
    return None, None


def tune(
    entries: Iterable[Entry], spec: RulesSpec, paranoia: int, show: Callable[[Matched], str]
) -> TuningReport:
    """Inspect every request at the configured level and at `paranoia`; `show` turns a match
    into the text printed (the CLI redacts it with the config's Redactor)."""
    rule_id, inspect = configured(spec)
    at = inspect or InspectSpec()
    base = InspectCondition(at) if inspect is not None else None
    other = InspectCondition(dataclasses.replace(at, paranoia=paranoia))
    low = min(at.paranoia if inspect is not None else 0, paranoia)
    report = TuningReport(rule_id, at.paranoia if inspect is not None else 0, paranoia, at.threshold)
    inspector = inspector_for(max(paranoia, report.base, 1))
    for entry in entries:
        facts = entry.facts
        if facts.body is not None and (not at.body or len(facts.body) > at.body_limit):
            facts = dataclasses.replace(facts, body=None)
        report.requests += 1
        inspection = inspector.inspect(facts)
        if not inspection.ids:
            continue
        now = base.result(inspection) if base is not None else None
        then = other.result(inspection)
        held = now is not None and now.score >= at.threshold
        holds = then.score >= at.threshold
        report.base_hits += held
        report.other_hits += holds
        before = set(now.families) if held and now is not None else set()
        after = set(then.families) if holds else set()
        for family in before | after:
            tally = report.families.setdefault(family, FamilyTally())
            tally.base += family in before
            tally.other += family in after
            tally.added += (family in after) != (family in before)
        higher = after if paranoia > report.base else before
        result = then if paranoia > report.base else now
        if not higher or result is None:
            continue
        extra = [i for i in result.ids if INFO[i][1] > low]
        explained = explain(facts, extra)
        for match in explained:
            report.families[INFO[match.id][0]].values[f"{match.id} {show(match)}"] += 1
        for check in set(extra) - {m.id for m in explained}:  # a check, not a pattern: its name
            report.families[INFO[check][0]].values[f"{check} ({NAMES[check]})"] += 1
    return report
