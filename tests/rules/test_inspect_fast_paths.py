"""The inspection's fast paths give what the plain, slower way gives: C-level percent
decoding, `str.replace` for common HTML entities, whitespace compression without a pass per
line, and form fields taken in bulk rather than pair by pair."""

from __future__ import annotations

import random
from urllib.parse import unquote

import pytest

from proxylog.rules.inspect import inspector as inspector_module
from proxylog.rules.inspect import transforms
from proxylog.rules.inspect.inspector import MAX_CHARS, MAX_VALUES, _Values

PIECES = ["%", "2", "5", "a", "f", "g", "c3", "a9", "\\", "x", "é", "&", "amp;", "lt;", "#39;", "#x26",
          "quot;", "\n", ";", "\x7f", "\r", "%e2%82", "%u0041", " ", "  ", "\t", "\x1c", "\u00a0",
          "=", "+"]  # fmt: skip


def _samples(count: int) -> list[str]:
    """Short texts, and long ones (the fast paths start at `transforms.LONG` characters)."""
    rng = random.Random(13)
    short = ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 12))) for _ in range(count)]
    return short + ["".join(rng.choice(PIECES) for _ in range(transforms.LONG)) for _ in range(count // 20)]


def test_percent_decoding_matches_unquote() -> None:
    for text in _samples(20_000):
        assert transforms._unquote(text) == unquote(text, errors="replace"), repr(text)


def test_entity_decoding_matches_the_one_pass_regex() -> None:
    """``&amp;lt;`` stays ``&lt;`` (one pass), whichever path decodes it."""
    assert transforms._entities("&amp;lt;") == "&lt;"
    for text in [*_samples(20_000), "&amp;" * 50, "&lt;&amp;lt;&#38;amp;"]:
        assert transforms._entities(text) == str(transforms._ENTITY.sub(transforms._entity, text)).lower()


def test_compression_matches_line_by_line_split() -> None:
    for text in _samples(20_000):
        by_line = "\n".join(" ".join(line.split()) for line in text.split("\n"))
        assert transforms._compress_lines(text) == by_line, repr(text)


@pytest.mark.parametrize(
    "text",
    [
        "a=1&b=2&=3&c=&d&&e=x%3Dy=z",
        "session_id=abc&SESS%49D=1&x%0ay=2",
        "&".join(f"f{n}=v{n}" for n in range(MAX_VALUES + 40)),  # over the value cap
        "a=" + "b" * (MAX_CHARS - 10) + "&c=" + "d" * 40,  # over the character budget
    ],
)
def test_bulk_form_fields_match_pair_by_pair(text: str) -> None:
    bulk, single = _Values(), _Values()
    bulk.add("p", "/x", False)
    single.add("p", "/x", False)
    bulk.form(text)
    for part in (p for p in text.split("&", MAX_VALUES)[:MAX_VALUES] if p):
        name, _, value = part.partition("=")
        single.pair(name, value, True)
    assert (bulk.raw, bulk.names, bulk.count, bulk.budget, bulk.cut) == (
        single.raw,
        single.names,
        single.count,
        single.budget,
        single.cut,
    )
    sessions = inspector_module.SESSION_NAMES
    assert sessions & set(bulk.names) == sessions & set(single.names)


def test_printable_lines_matches_isprintable() -> None:
    for text in [*_samples(20_000), "\x7f", "a\nb", "\r", ""]:
        assert transforms._printable_lines(text) == text.replace("\n", " ").isprintable(), repr(text)


def _cmd_form_slowly(plain: str) -> str:
    text = plain
    for char, replacement in (*transforms._CMD_DROP, (",", " ")):
        text = text.replace(char, replacement)
    text = text.replace("${ifs}", " ").replace("$ifs$9", " ").replace("$ifs", " ").replace("$@", "")
    text = text.replace(" /", "/").replace(" (", "(")
    return "\n".join(" ".join(line.split()) for line in text.split("\n"))


@pytest.mark.parametrize("alphabet", ["ab ,{}'\"\\/($\n", "ab ,{}'\"\\$\n"])
def test_cmd_form_matches_the_plain_replacements(alphabet: str) -> None:
    """Commas before a space go first where no " /" or " (" could follow them."""
    rng = random.Random(7)
    for n in range(5_000):
        size = rng.randint(0, 14) if n % 50 else 600
        raw = "".join(rng.choice([*alphabet, "$ifs", ", "]) for _ in range(size))
        plain = "\n".join(" ".join(line.split()) for line in raw.split("\n"))
        assert transforms.cmd_form(plain) == _cmd_form_slowly(plain), repr(plain)
