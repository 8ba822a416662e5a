"""The inspection rules: one `Rule` per CRS rule id, its family, paranoia level, severity,
the request parts it looks at and the form of the value it matches.

The patterns are proxylog's own, written for re2 against the families and evasions the OWASP
Core Rule Set targets (the ids say which CRS rule a match corresponds to; none of CRS's
pattern text is used). Values are matched lower-cased and decoded, one per line: a pattern
must not cross a line, so none uses ``\\s``, ``\\W``, ``\\D`` or a negated class without
``\\n`` (tests/rules/test_inspect_catalog.py checks this), and ``^``/``$`` are a value's ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Form = Literal["plain", "sql", "cmd"]
# p: the path; a: query and body argument values; n: argument and cookie names;
# c: cookie values; h: User-Agent, Referer and X-* header values
Group = Literal["p", "a", "n", "c", "h"]
GROUPS: tuple[Group, ...] = ("p", "a", "n", "c", "h")

CRITICAL, ERROR, WARNING, NOTICE = 5, 4, 3, 2  # CRS's anomaly scores per severity


@dataclass(frozen=True, slots=True)
class Rule:
    """One inspection rule. `pattern` is re2 syntax; `groups` the request parts it reads."""

    id: int
    family: str
    paranoia: int
    severity: int
    groups: str
    form: Form
    pattern: str
    name: str


def rules(family: str, form: Form, table: list[tuple[int, int, int, str, str, str]]) -> list[Rule]:
    """Rules of one family from rows of (id, paranoia, severity, groups, name, pattern)."""
    return [Rule(i, family, pl, sev, groups, form, pat, name) for i, pl, sev, groups, name, pat in table]


# Python-side checks (not patterns) that the inspector itself reports: id → (family, PL, severity, name)
CHECKS: dict[int, tuple[str, int, int, str]] = {
    911100: ("protocol", 1, CRITICAL, "method not allowed"),
    920170: ("protocol", 1, CRITICAL, "GET or HEAD request with a body"),
    920230: ("protocol", 2, WARNING, "multiple URL encoding"),
    920260: ("protocol", 1, WARNING, "full-width Unicode encoding"),
    920270: ("protocol", 1, CRITICAL, "NUL character in a value"),
    930100: ("lfi", 1, CRITICAL, "path traversal, encoded"),
    943110: ("session-fixation", 1, CRITICAL, "session id parameter with an off-site Referer"),
    943120: ("session-fixation", 1, CRITICAL, "session id parameter without a Referer"),
}
