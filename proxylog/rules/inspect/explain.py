"""Which value of a request each matched rule id matched, for tuning (`proxylog replay
--inspect-paranoia`): slow (one re2 search per id and value), so run only on requests an
inspection already found something in. The live path never calls it."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import re2

from proxylog.rules.inspect.bodies import body_pairs, form_pairs
from proxylog.rules.inspect.catalog import Group, Rule
from proxylog.rules.inspect.inspector import CATALOG, MAX_VALUES
from proxylog.rules.inspect.transforms import cmd_form, decode_many, sql_form
from proxylog.rules.types import RequestFacts

PART_NAMES: dict[Group, str] = {"p": "path", "a": "arg", "n": "name", "c": "cookie", "h": "header"}
_BY_ID: dict[int, Rule] = {r.id: r for r in CATALOG}
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False


@dataclass(frozen=True, slots=True)
class Matched:
    """One rule id's match: the request part, the value's name there (an argument, cookie or
    header name; None for the path or a whole body), the value as sent (`raw`) and in the
    transformed form the rule matched (`form`), with the span of the match in it."""

    id: int
    part: Group
    name: str | None
    raw: str
    form: str
    start: int
    end: int


def values(facts: RequestFacts) -> Iterator[tuple[Group, str | None, str, bool]]:
    """The request's (part, name, raw value, ``+`` is a space) as the inspector reads them."""
    yield "p", None, facts.path, False
    pairs = list(form_pairs(facts.query, MAX_VALUES)) if facts.query else []
    if facts.body:
        pairs += body_pairs(facts.body, facts.content_type, MAX_VALUES)
    for name, value, plus in pairs:
        if name:
            yield "n", None, name, plus
        yield "a", name, value, plus
    for name, value in facts.headers:
        if name == "cookie":
            for crumb in value.split(";"):
                cname, _, cvalue = crumb.strip().partition("=")
                yield "n", None, cname, False
                yield "c", cname, cvalue, False
        else:
            yield "h", name, value, False
    if facts.user_agent:
        yield "h", "user-agent", facts.user_agent, False


def explain(facts: RequestFacts, ids: Iterable[int]) -> list[Matched]:
    """The first value each of `ids` (pattern rules; other ids are skipped) matches."""
    rules = [_BY_ID[i] for i in ids if i in _BY_ID]
    if not rules:
        return []
    found: list[Matched] = []
    forms: dict[tuple[Group, str, bool], dict[str, str]] = {}
    candidates = [(part, name, raw, plus) for part, name, raw, plus in values(facts) if raw]
    for rule in rules:
        for part, name, raw, plus in candidates:
            if part not in rule.groups:
                continue
            texts = forms.get((part, raw, plus))
            if texts is None:
                plain = decode_many([raw], plus=plus)[0]
                texts = forms[(part, raw, plus)] = {
                    "plain": plain,
                    "sql": sql_form(plain),
                    "cmd": cmd_form(plain),
                }
            hit = _first(rule, texts)
            if hit is not None:
                form, start, end = hit
                found.append(Matched(rule.id, part, name, raw, form, start, end))
                break
    return found


def _first(rule: Rule, texts: dict[str, str]) -> tuple[str, int, int] | None:
    pattern = _compiled(rule.id)
    for form in dict.fromkeys(("plain", rule.form)):
        match = pattern.search(texts[form])
        if match is not None:
            return texts[form], match.start(), match.end()
    return None


@functools.cache
def _compiled(rule_id: int) -> re2._Regexp:
    return re2.compile("(?m)" + _BY_ID[rule_id].pattern, _OPTIONS)
