"""Single-request attack detection: CRS-style transformations, rule families under CRS rule
ids, paranoia levels and anomaly scoring, in linear time (google-re2 only).

`Inspector.inspect(facts)` finds the catalog's rule ids that match a request once; an
`InspectCondition` (a rule's ``when: {inspect: …}``) scores them for its paranoia level and
exclusions. docs/inspection.md lists the families, ids and what each costs.
"""

from __future__ import annotations

from proxylog.rules.inspect.condition import InspectCondition, InspectResult
from proxylog.rules.inspect.inspector import CATALOG, INFO, NAMES, Inspection, Inspector, inspector_for

__all__ = [
    "CATALOG",
    "INFO",
    "NAMES",
    "InspectCondition",
    "InspectResult",
    "Inspection",
    "Inspector",
    "inspector_for",
]
