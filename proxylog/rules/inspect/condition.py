"""A rule's ``inspect:`` condition: one inspection scored for a paranoia level, CRS style."""

from __future__ import annotations

from dataclasses import dataclass

from proxylog.config.rule_specs import InspectSpec
from proxylog.rules.inspect.inspector import INFO, Inspection


@dataclass(frozen=True, slots=True)
class InspectResult:
    """A request's anomaly score under one condition, the rule ids that made it (sorted) and
    their families, the highest-scoring first (ties in rule-id order)."""

    score: int
    ids: tuple[int, ...]
    families: tuple[str, ...]


NO_RESULT = InspectResult(0, (), ())


class InspectCondition:
    """Scores inspections for a spec; raises ValueError for an excluded id the catalog lacks."""

    __slots__ = ("body", "body_limit", "excluded", "families", "paranoia", "threshold")

    def __init__(self, spec: InspectSpec) -> None:
        unknown = sorted(i for i in spec.exclude_ids if i not in INFO)
        if unknown:
            raise ValueError(f"no inspection rule has id {', '.join(map(str, unknown))}")
        self.paranoia = spec.paranoia
        self.threshold = spec.threshold
        self.excluded = spec.exclude_ids
        self.families = spec.families or None
        self.body = spec.body
        self.body_limit = spec.body_limit if spec.body else 0

    def result(self, inspection: Inspection) -> InspectResult:
        """The score of `inspection` under this condition."""
        if not inspection.ids:
            return NO_RESULT
        score = 0
        ids: list[int] = []
        families: dict[str, int] = {}
        for rule_id in inspection.ids:
            family, paranoia, severity = INFO[rule_id]
            if paranoia > self.paranoia or rule_id in self.excluded:
                continue
            if self.families is not None and family not in self.families:
                continue
            score += severity
            ids.append(rule_id)
            families[family] = families.get(family, 0) + severity
        if not ids:
            return NO_RESULT
        ranked = sorted(families, key=families.__getitem__, reverse=True) if len(families) > 1 else families
        return InspectResult(score, tuple(ids), tuple(ranked))

    def holds(self, inspection: Inspection) -> bool:
        """Whether the request's score reaches the threshold."""
        return bool(inspection.ids) and self.result(inspection).score >= self.threshold
