"""One inspection of a request: its values extracted and transformed once, each request
part's values matched in one re2.Set pass per form, and the CRS rule ids that matched.

Work is bounded: at most `MAX_VALUES` values and `MAX_CHARS` characters of them per
request (the rest is not inspected and the inspection says it was cut), every transform is
linear, and re2 matches in linear time; so an inspection costs O(request size).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import re2

from proxylog.rules.inspect import rce, sqli, web, xss
from proxylog.rules.inspect.bodies import body_pairs, is_form
from proxylog.rules.inspect.catalog import CHECKS, GROUPS, Group, Rule
from proxylog.rules.inspect.transforms import Decoded, cmd_form, decode_many, sql_form
from proxylog.rules.types import RequestFacts

MAX_VALUES = 512  # CRS's default cap on arguments is 255
MAX_CHARS = 65_536
CACHE = 4096  # per part: paths, user agents and cookies repeat
ALLOWED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SESSION_NAMES = frozenset(
    {"jsessionid", "phpsessid", "aspsessionid", "asp.net_sessionid", "sessionid", "session_id",
     "_session_id", "sessid", "cfid", "cftoken", "sid", "session", "sess_id"}
)  # fmt: skip

CATALOG: tuple[Rule, ...] = (
    *sqli.SQLI, *sqli.NOSQL, *xss.XSS, *rce.RCE, *rce.SHELLSHOCK, *web.PHP, *web.JAVA, *web.LFI,
    *web.RFI, *web.SESSION, *web.PROTOCOL, *web.GENERIC,
)  # fmt: skip
# id → (family, paranoia, severity), for patterns and Python-side checks alike
INFO: dict[int, tuple[str, int, int]] = {
    **{r.id: (r.family, r.paranoia, r.severity) for r in CATALOG},
    **{i: (family, pl, sev) for i, (family, pl, sev, _) in CHECKS.items()},
}
NAMES: dict[int, str] = {**{r.id: r.name for r in CATALOG}, **{i: c[3] for i, c in CHECKS.items()}}

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_OPTIONS.max_mem = 64 << 20


@dataclass(frozen=True, slots=True)
class Inspection:
    """What an inspection found: the rule ids that matched (sorted), the characters matched
    (the work done) and whether the request held more than was inspected."""

    ids: tuple[int, ...] = ()
    work: int = 0
    cut: bool = False


NOTHING = Inspection()


class _Values:
    """A request's raw values per part, within the per-request budget, decoded per part in
    one pass (`decoded`)."""

    __slots__ = ("budget", "checks", "count", "cut", "names", "raw")

    def __init__(self) -> None:
        self.raw: dict[tuple[Group, bool], list[str]] = {}
        self.checks: set[int] = set()
        self.names: list[str] = []  # argument names (not cookies'), for session-fixation checks
        self.budget = MAX_CHARS
        self.count = 0
        self.cut = False

    def add(self, group: Group, raw: str, plus: bool) -> None:
        if not raw:
            return
        if self.count >= MAX_VALUES or len(raw) > self.budget:
            self.cut = True
            raw = raw[: max(0, self.budget)]
            if not raw or self.count >= MAX_VALUES:
                return
        self.count += 1
        self.budget -= len(raw)
        key = (group, plus)
        found = self.raw.get(key)
        if found is None:
            self.raw[key] = [raw]
        else:
            found.append(raw)

    def form(self, text: str) -> None:
        """The names and values of ``a=1&b=2`` text (a query or a form body), as `add` would
        take them pair by pair; in bulk when they fit the budget (the usual case)."""
        pairs = [part.partition("=") for part in text.split("&", MAX_VALUES)[:MAX_VALUES] if part]
        names = [p[0] for p in pairs if p[0]]
        raws = [p[2] for p in pairs if p[2]]
        size = sum(map(len, names)) + sum(map(len, raws))
        if self.count + len(names) + len(raws) > MAX_VALUES or size > self.budget:
            for name, _, value in pairs:  # the budget runs out inside: value by value
                self.pair(name, value, True)
            return
        self.count += len(names) + len(raws)
        self.budget -= size
        parts: tuple[tuple[Group, list[str]], ...] = (("n", names), ("a", raws))
        for group, found in parts:
            if found:
                self.raw.setdefault((group, True), []).extend(found)
        if names and len(self.names) < MAX_VALUES:
            lowered = "\n".join(names).lower()
            if "%" in lowered or "\r" in lowered or lowered.count("\n") != len(names) - 1:
                self.names.extend(unquote(name).lower() if "%" in name else name.lower() for name in names)
            else:
                self.names.extend(lowered.split("\n"))
            del self.names[MAX_VALUES:]

    def pair(self, name: str | None, value: str, plus: bool) -> None:
        if name:
            self.add("n", name, plus)
            if len(self.names) < MAX_VALUES:
                self.names.append(unquote(name).lower() if "%" in name else name.lower())
        self.add("a", value, plus)

    def decoded(self) -> dict[Group, list[str]]:
        """Each part's values, decoded and one per line (a part's form- and non-form-encoded
        values are decoded apart)."""
        parts: dict[Group, list[str]] = {}
        for (group, plus), raws in self.raw.items():
            plain, found = decode_many(raws, plus=plus)
            self._note(found, raws)
            if plain.strip("\n"):
                parts.setdefault(group, []).append(plain)
        return parts

    def _note(self, d: Decoded, raws: list[str]) -> None:
        if d.had_nul:
            self.checks.add(920270)
        if d.decodes >= 2 or d.still_encoded:
            self.checks.add(920230)
        if d.fullwidth:
            self.checks.add(920260)
        if d.decodes and ".." in d.plain and ("../" in d.plain or "..\\" in d.plain):
            before = sum(r.count("../") + r.count("..\\") for r in raws)
            if d.plain.count("../") + d.plain.count("..\\") > before:
                self.checks.add(930100)


class Inspector:
    """The catalog's rules up to `paranoia`, compiled into one re2.Set per (part, form).
    Thread-safe to call; build it once (`inspector_for`)."""

    def __init__(self, paranoia: int) -> None:
        self.paranoia = paranoia
        chosen = [r for r in CATALOG if r.paranoia <= paranoia]
        self._sets: dict[tuple[Group, str], tuple[re2.Set, tuple[int, ...]]] = {}
        for group in GROUPS:
            mine = [r for r in chosen if group in r.groups]
            for form in ("plain", "sql", "cmd"):
                members = mine if form == "plain" else [r for r in mine if r.form == form]
                if members:
                    self._sets[(group, form)] = _compile(members)
        self._seen: dict[tuple[Group, str], tuple[int, ...]] = {}

    def inspect(self, facts: RequestFacts) -> Inspection:
        """Inspect the request's path, query, selected headers and (if the facts carry one)
        body. Never raises on request data."""
        values = _Values()
        values.add("p", facts.path, False)
        if facts.query:
            values.form(facts.query)
        referer: str | None = None
        for name, value in facts.headers:
            if name == "cookie":
                for crumb in value.split(";"):
                    cname, _, cvalue = crumb.strip().partition("=")
                    values.add("n", cname, False)
                    values.add("c", cvalue, False)
            else:
                if name == "referer":
                    referer = value
                values.add("h", value, False)
        if facts.user_agent:
            values.add("h", facts.user_agent, False)
        if facts.body:
            if facts.method in ("GET", "HEAD"):
                values.checks.add(920170)
            if facts.body.startswith(b"\xac\xed\x00\x05"):
                values.checks.add(944120)
            if is_form(facts.body, facts.content_type):
                values.form(facts.body.decode("latin-1"))
            else:
                for key, value, plus in body_pairs(facts.body, facts.content_type, MAX_VALUES):
                    values.pair(key, value, plus)
        if facts.method and facts.method not in ALLOWED_METHODS:
            values.checks.add(911100)
        if values.names:
            self._session(values, referer, facts.host)
        return self._match(values)

    @staticmethod
    def _session(values: _Values, referer: str | None, host: str) -> None:
        if SESSION_NAMES.isdisjoint(values.names):
            return
        if not referer:
            values.checks.add(943120)
            return
        try:
            origin = urlsplit(referer).hostname or ""
        except ValueError:
            origin = ""
        if origin != host.lower():
            values.checks.add(943110)

    def _match(self, values: _Values) -> Inspection:
        parts = values.decoded()
        found = {i for i in values.checks if INFO[i][1] <= self.paranoia}
        work = 0
        for group, blocks in parts.items():
            plain = "\n".join(blocks)
            work += len(plain)
            found.update(self._scan(group, "plain", plain, cache=group != "a"))
            if (group, "sql") in self._sets:
                sql = "\n".join(sql_form(t) for t in plain.split("\n")) if "/*" in plain else plain
                if sql is not plain:
                    work += len(sql)
                    found.update(self._scan(group, "sql", sql, cache=False))
            if (group, "cmd") in self._sets:
                cmd = cmd_form(plain)
                if cmd != plain:
                    work += len(cmd)
                    found.update(self._scan(group, "cmd", cmd, cache=False))
        if not found and not values.cut:
            return Inspection(work=work)
        return Inspection(tuple(sorted(found)), work, values.cut)

    def _scan(self, group: Group, form: str, text: str, *, cache: bool) -> Iterable[int]:
        compiled = self._sets.get((group, form))
        if compiled is None:
            return ()
        patterns, ids = compiled
        if not cache:
            hits = patterns.Match(text)
            return [ids[h] for h in hits] if hits else ()
        key = (group, text)
        seen = self._seen.get(key)
        if seen is None:
            hits = patterns.Match(text)
            seen = tuple(ids[h] for h in hits) if hits else ()
            if len(self._seen) >= CACHE:
                self._seen.clear()
            self._seen[key] = seen
        return seen


def _compile(members: list[Rule]) -> tuple[re2.Set, tuple[int, ...]]:
    patterns = re2.Set.SearchSet(_OPTIONS)
    for rule in members:
        patterns.Add("(?m)" + rule.pattern)
    patterns.Compile()
    return patterns, tuple(r.id for r in members)


@functools.lru_cache(maxsize=4)
def inspector_for(paranoia: int) -> Inspector:
    """The shared Inspector for a paranoia level (compiled once per process)."""
    return Inspector(paranoia)
