"""Compiled `when:`/`unless:` conditions, and one re2 scan per request field for all of them.

Every pattern of every rule on a field (path, query, url, user agent, host) goes into one
``re2.Set``, so a request's path is scanned once whatever the number of rules; each rule
then only tests whether one of its pattern ids is among the hits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import re2

from proxylog.config.rule_specs import PATTERN_FIELDS, MatchSpec, PatternField
from proxylog.rules.inspect import InspectCondition, Inspection, Inspector, inspector_for
from proxylog.rules.named_lists import pattern_for
from proxylog.rules.types import RequestFacts


def _url(facts: RequestFacts) -> str:
    return facts.path if facts.query is None else f"{facts.path}?{facts.query}"


# The text of each field a pattern can look at.
FIELD_TEXT: dict[str, Callable[[RequestFacts], str]] = {
    "path": lambda f: f.path,
    "query": lambda f: f.query or "",
    "url": _url,
    "user_agent": lambda f: f.user_agent or "",
    "host": lambda f: f.host,
}

# What a `distinct:` rule counts the distinct values of.
DISTINCT_VALUE: dict[str, Callable[[RequestFacts], str]] = {
    **FIELD_TEXT,
    "method": lambda f: f.method,
}


class PatternSetError(ValueError):
    """The patterns on one field are together too large for re2 to compile into one set."""

    def __init__(self, field: PatternField, count: int) -> None:
        super().__init__(f"the {count} patterns on {field} are too large for re2 to compile together")
        self.field = field


SCAN_CACHE = 8192  # per field: user agents, paths and queries repeat; a full cache starts over


class Scanner:
    """One re2.Set per field over every pattern the compiled matches use on it, with the
    results for recently seen texts remembered (a browser's User-Agent is scanned once)."""

    def __init__(self) -> None:
        self._ids: dict[PatternField, dict[str, int]] = {name: {} for name in PATTERN_FIELDS}
        self._sets: dict[PatternField, re2.Set] = {}
        self._seen: dict[PatternField, dict[str, tuple[int, ...]]] = {name: {} for name in PATTERN_FIELDS}
        self.paranoia = 0  # the highest paranoia level an `inspect:` condition asks for
        self.inspector: Inspector | None = None

    def inspect_at(self, paranoia: int) -> None:
        """Note that a condition inspects requests at `paranoia`."""
        self.paranoia = max(self.paranoia, paranoia)

    def pattern_id(self, field: PatternField, pattern: str) -> int:
        """The id of a pattern (``@list`` or re2) on a field, adding it if new."""
        ids = self._ids[field]
        if pattern not in ids:
            ids[pattern] = len(ids)
        return ids[pattern]

    def compile(self) -> None:
        """Build the sets; call once every pattern is added. Raises PatternSetError when a
        field's set exceeds re2's memory budget."""
        if self.paranoia:
            self.inspector = inspector_for(self.paranoia)
        options = re2.Options()
        options.log_errors = False
        for name, ids in self._ids.items():
            if not ids:
                continue
            patterns = re2.Set.SearchSet(options)
            for pattern in ids:  # insertion order = id order
                patterns.Add(pattern_for(pattern))
            try:
                patterns.Compile()
            except re2.error as e:
                raise PatternSetError(name, len(ids)) from e
            self._sets[name] = patterns

    def scan(self, field: PatternField, facts: RequestFacts) -> tuple[int, ...]:
        """The ids of the patterns on `field` that match this request."""
        patterns = self._sets.get(field)
        if patterns is None:
            return ()
        text = FIELD_TEXT[field](facts)
        seen = self._seen[field]
        hits = seen.get(text)
        if hits is None:
            found = patterns.Match(text)
            hits = tuple(found) if found else ()
            if len(seen) >= SCAN_CACHE:
                seen.clear()
            seen[text] = hits
        return hits


class Scan:
    """A request's field scans, each run at most once and only when a rule asks."""

    __slots__ = ("_done", "_inspection", "facts", "scanner")

    def __init__(self, scanner: Scanner, facts: RequestFacts) -> None:
        self.scanner = scanner
        self.facts = facts
        self._done: dict[PatternField, tuple[int, ...]] = {}
        self._inspection: Inspection | None = None

    def inspection(self) -> Inspection:
        """The request's inspection (run once, when a rule first asks)."""
        if self._inspection is None:
            inspector = self.scanner.inspector
            self._inspection = inspector.inspect(self.facts) if inspector is not None else Inspection()
        return self._inspection

    def hits(self, field: PatternField) -> tuple[int, ...]:
        """The ids of the patterns on `field` that match this request."""
        done = self._done.get(field)
        if done is None:
            done = self._done[field] = self.scanner.scan(field, self.facts)
        return done


class Match:
    """A compiled MatchSpec: every condition must hold; values within one are any-of."""

    __slots__ = ("headers", "inspect", "methods", "missing", "patterns", "statuses")

    def __init__(self, spec: MatchSpec, scanner: Scanner) -> None:
        self.methods = spec.methods or None
        self.statuses = spec.statuses or None
        self.headers = frozenset(spec.headers) or None
        self.missing = frozenset(spec.missing_headers) or None
        self.patterns = tuple(
            (name, frozenset(scanner.pattern_id(name, p) for p in pats if p), "" in pats)
            for name, pats in spec.patterns
        )
        self.inspect = InspectCondition(spec.inspect) if spec.inspect is not None else None
        if self.inspect is not None:
            scanner.inspect_at(self.inspect.paranoia)

    def __call__(self, facts: RequestFacts, status: int | None, scan: Scan) -> bool:
        if self.statuses is not None and status not in self.statuses:
            return False
        if self.methods is not None and facts.method not in self.methods:
            return False
        if self.headers is not None and self.headers.isdisjoint(facts.header_names):
            return False
        if self.missing is not None and self.missing <= facts.header_names:
            return False
        for name, ids, empty in self.patterns:
            if empty and not facts.user_agent:
                continue  # `user_agent: ""` matches a missing or empty User-Agent
            if ids.isdisjoint(scan.hits(name)):
                return False
        return self.inspect is None or self.inspect.holds(scan.inspection())


def compile_matches(specs: Iterable[MatchSpec], scanner: Scanner) -> list[Match | None]:
    """Compiled matches for `specs` (None for an empty spec, which matches everything)."""
    return [Match(spec, scanner) if spec else None for spec in specs]
