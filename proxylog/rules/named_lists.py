"""The ``@name`` lists shipped in proxylog/rules/lists/: detector word lists compiled to re2.

Each ``name.txt`` starts with ``#`` header lines (description, ``# match:`` kind, source and
licence), then one entry per line. Entries match case-insensitively, and any character in
an entry also matches its percent-encoded form (and ``%XX`` in an entry its character), so
``../`` catches ``..%2f`` and ``%20union%20select%20`` catches ``+union+select+`` too
(a space also matches ``+``, its form encoding).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import re2

_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True)
class NamedList:
    """One list: its entries, how they match (`match`), and the re2 pattern they compile to."""

    name: str
    match: str
    entries: tuple[str, ...]
    description: str

    @property
    def pattern(self) -> str:
        """The re2 pattern the entries compile to."""
        return str(_BUILDERS[self.match](self.entries))


def _escape(text: str) -> str:
    return str(re2.escape(text))


_SPACE = r"(?:\ |%20|\+)"  # a space in a query string is also sent as + (form encoding)


def _char(c: str) -> str:
    """One character of an entry: itself, or its %XX form when it is punctuation."""
    if c == " ":
        return _SPACE
    if c.isalnum() or not c.isascii():
        return _escape(c)
    return f"(?:{_escape(c)}|%{ord(c):02x})"


def _literal(entry: str) -> str:
    """An entry as a pattern in which ``%XX`` and the character it encodes are interchangeable."""
    out: list[str] = []
    pos = 0
    for match in _PERCENT.finditer(entry):
        out.extend(_char(c) for c in entry[pos : match.start()])
        decoded = chr(int(match.group(1), 16))
        out.append(_SPACE if decoded == " " else f"(?:%{match.group(1)}|{_escape(decoded)})")
        pos = match.end()
    out.extend(_char(c) for c in entry[pos:])
    return "".join(out)


def _alternation(entries: tuple[str, ...]) -> str:
    return "|".join(_literal(e) for e in entries)


_BUILDERS: dict[str, Callable[[tuple[str, ...]], str]] = {
    "contains": lambda entries: f"(?i)(?:{_alternation(entries)})",
    "suffix": lambda entries: f"(?i)(?:{_alternation(entries)})$",
    "segment": lambda entries: f"(?i)(?:^|/)(?:{_alternation(entries)})$",
    "regex": lambda entries: "(?i)" + "|".join(f"(?:{e})" for e in entries),
}


@functools.cache
def load_list(name: str) -> NamedList:
    """Read a shipped list by name (without the ``@``); raises KeyError for an unknown name."""
    path = resources.files("proxylog").joinpath("rules", "lists", f"{name}.txt")
    if not path.is_file():
        raise KeyError(name)
    header: dict[str, str] = {}
    description = ""
    entries: list[str] = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("#"):
            key, sep, value = line[1:].strip().partition(":")
            if not description and key.startswith("@"):
                description = value.strip()
            elif sep:
                header.setdefault(key.strip(), value.strip())
        elif line.strip():
            entries.append(line.rstrip("\r"))  # trailing spaces are part of some entries
    match = header.get("match", "contains")
    if match not in _BUILDERS:
        raise ValueError(f"{name}.txt: unknown match kind {match!r}")
    return NamedList(name, match, tuple(entries), description)


def pattern_for(text: str) -> str:
    """The re2 pattern for a rule pattern: ``@name`` becomes its list's pattern."""
    return load_list(text[1:]).pattern if text.startswith("@") else text
