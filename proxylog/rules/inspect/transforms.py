"""CRS-style transformations of one request value, each linear in its length.

A value is lower-cased, URL-decoded up to `MAX_DECODES` times (``+``, ``%XX``, ``%uXXXX`` and
overlong UTF-8 slashes and dots), HTML-entity and JavaScript-escape decoded, stripped of NUL
and control characters and whitespace-compressed: the `plain` form most rules match. Two
more forms derive from it: `sql` (comments replaced by a space, MySQL's ``/*!…*/`` kept) and
`cmd` (shell quoting, escapes and brace or bracket tricks removed, as CRS's cmdLine does).
CR and LF inside a value survive as `LINE` so header-injection rules can see them.
"""

from __future__ import annotations

import codecs
import html.entities
from dataclasses import dataclass
from urllib.parse import unquote

import re2

MAX_DECODES = 3
# Texts this long take the one-scan fast paths below; a shorter one is cheaper with a few
# `in` tests than with an re2 call.
LONG = 512
LINE = "\ue000"  # a CR or LF inside a value (values are joined by "\n" for matching)

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_PERCENT_U = re2.compile(r"%u([0-9a-f]{4})", _OPTIONS)
_ENTITY = re2.compile(r"&(?:#x([0-9a-f]{1,6});?|#([0-9]{1,7});?|([a-z][a-z0-9]{1,31});)", _OPTIONS)
_JS_ESCAPE = re2.compile(r"\\(?:u\{?([0-9a-f]{4})\}?|x([0-9a-f]{2}))", _OPTIONS)
_VERSIONED_COMMENT = re2.compile(r"/\*!(?:[0-9]{5,6})?", _OPTIONS)
_ENCODED = re2.compile(r"%[0-9a-f]{2}", _OPTIONS)
# Overlong UTF-8 forms of "/", "\" and "." that some servers decode (IIS, old Tomcat).
_OVERLONG = (("%c0%af", "/"), ("%e0%80%af", "/"), ("%c1%9c", "\\"), ("%c1%1c", "\\"), ("%c0%ae", "."))
_SPECIAL = re2.compile(r"%(?:c|e0|0a|0d|u)", _OPTIONS)  # what a decoding pass treats apart
_CONTROL_BYTES = bytes((*range(0, 10), *range(11, 32), 127))  # all but "\n"
_LOOSE = re2.compile(r"  | \n|\n ", _OPTIONS)  # spaces whitespace compression removes (but at the ends)
_BAD_PERCENT = re2.compile(r"%(?:[^0-9a-f]|[0-9a-f][^0-9a-f]|[0-9a-f]?$)", _OPTIONS)  # lower-cased text
_COMMON_ENTITIES = (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&#39;", "'"))
_ENTITIES = {name.rstrip(";").lower(): text for name, text in html.entities.html5.items()}
_CONTROL = {code: None for code in (*range(0, 9), 11, 12, *range(14, 32), 127)} | {
    10: LINE,
    13: LINE,
    0xE000: None,
}
_CONTROL_LINES = {code: LINE if code == 13 else None for code in _CONTROL if code not in (10, 0xE000)}
_LINE_ENCODED = "%ee%80%80"  # LINE in UTF-8, percent-encoded
_CMD_DROP = (
    ("\\", ""), ('"', ""), ("'", ""), ("^", ""), ("[", ""), ("]", ""), ("{", " "), ("}", " ")
)  # fmt: skip


@dataclass(slots=True)
class Decoded:
    """The forms of one value and what decoding noticed on the way."""

    plain: str
    decodes: int = 0  # URL-decoding passes that changed the value
    still_encoded: bool = False  # %XX sequences left after MAX_DECODES passes
    had_nul: bool = False
    fullwidth: bool = False  # %uFFxx: full-width characters some backends fold to ASCII


def decode_many(raws: list[str], *, plus: bool = True) -> tuple[str, Decoded]:
    """Several values decoded in one pass: their `plain` forms one per line (an encoded CR
    or LF inside a value becomes `LINE`, never a line break), and what decoding noticed."""
    joined = "\n".join(raws)
    if "\r" in joined or joined.count("\n") != len(raws) - 1:  # a raw CR or LF inside a value
        joined = "\n".join(r.replace("\r", "%0d").replace("\n", "%0a") for r in raws)
    found = decode(joined, plus=plus, lines=True)
    return found.plain, found


def decode(raw: str, *, plus: bool = True, lines: bool = False) -> Decoded:
    """`raw` (as sent) → its lower-cased, decoded, compressed `plain` form. With `lines`,
    "\n" separates values and survives (see `decode_many`)."""
    text = raw.lower()
    out = Decoded(text)
    if plus and "+" in text:
        text = text.replace("+", " ")
    if "%" in text:
        for _ in range(MAX_DECODES):
            if "%" not in text or (_ENCODED.search(text) is None and "%u" not in text):
                break
            if len(text) < LONG or _SPECIAL.search(text) is not None:  # one scan, not five
                if "%c" in text or "%e0" in text:
                    for seq, char in _OVERLONG:
                        text = text.replace(seq, char)
                if lines and ("%0a" in text or "%0d" in text):
                    text = text.replace("%0a", _LINE_ENCODED).replace("%0d", _LINE_ENCODED)
                if "%u" in text:
                    out.fullwidth = out.fullwidth or "%uff" in text
                    text = _PERCENT_U.sub(lambda m: _char(int(m.group(1), 16)), text)
            decoded = _unquote(text).lower()
            if decoded == text:
                break
            out.decodes += 1
            text = decoded
        out.still_encoded = "%" in text and _ENCODED.search(text) is not None
    if "&" in text:
        text = _entities(text)
    if "\\" in text:
        text = _JS_ESCAPE.sub(_js_escape, text).lower()
    if lines:
        printable = _printable_lines(text)
        if not printable:
            out.had_nul = "\x00" in text
            text = text.translate(_CONTROL_LINES)
        out.plain = _compress_lines(text, printable)
        return out
    if text.isprintable():
        out.plain = text.strip() if "  " not in text else " ".join(text.split())
        return out
    out.had_nul = "\x00" in text
    out.plain = " ".join(text.translate(_CONTROL).split())
    return out


def _printable_lines(text: str) -> bool:
    """Whether `text` is printable but for its line breaks; for ASCII, by a bytes.translate
    that deletes the control characters (a third of `str.isprintable`'s time)."""
    if len(text) >= LONG and text.isascii():
        raw = text.encode("ascii")
        return len(raw.translate(None, _CONTROL_BYTES)) == len(raw)
    return text.replace("\n", " ").isprintable()


def _unquote(text: str) -> str:
    """`urllib.parse.unquote(text, errors="replace")`, in C when every ``%`` of ASCII text
    starts a ``%XX`` escape (`codecs.escape_decode` of ``\\xXX``): no Python step per escape."""
    if len(text) < LONG or not text.isascii() or _BAD_PERCENT.search(text) is not None:
        return unquote(text, errors="replace")
    raw = text.encode("ascii")
    if b"\\" in raw:
        raw = raw.replace(b"\\", b"\\\\")
    decoded: bytes = codecs.escape_decode(raw.replace(b"%", b"\\x"))[0]
    return decoded.decode("utf-8", "replace")


def _entities(text: str) -> str:
    """HTML entities decoded in one pass (an entity's output is never decoded again). The
    common ones that yield no ``&`` go by `str.replace` (the same result: no entity spans an
    ``&``); if only ``&amp;`` is left, so does it; otherwise the regex decodes the rest."""
    for entity, char in _COMMON_ENTITIES:
        if entity in text:
            text = text.replace(entity, char)
    if "&" not in text:
        return text
    if text.count("&") == text.count("&amp;"):
        return text.replace("&amp;", "&")
    return str(_ENTITY.sub(_entity, text)).lower()


def _char(code: int) -> str:
    """A decoded code point; CR and LF become `LINE` (the line break is the value separator)."""
    if code in (10, 13):
        return LINE
    return chr(code) if 0 < code <= 0x10FFFF else ""


def _entity(match: re2.Match) -> str:
    hexa, dec, name = match.group(1), match.group(2), match.group(3)
    if name is not None:
        return _ENTITIES.get(name) or str(match.group(0))
    return _char(int(hexa, 16) if hexa is not None else int(dec))


def _js_escape(match: re2.Match) -> str:
    return _char(int(match.group(1) or match.group(2), 16))


def sql_form(plain: str) -> str:
    """`plain` with SQL comments turned into spaces (MySQL's executable ``/*!`` kept)."""
    if "/*" not in plain:
        return plain
    text = _VERSIONED_COMMENT.sub(" ", plain) if "/*!" in plain else plain
    out: list[str] = []
    at = 0
    while (start := text.find("/*", at)) >= 0:  # str.find: linear, no per-match callback
        out.append(text[at:start])
        end = text.find("*/", start + 2)
        at = len(text) if end < 0 else end + 2
        out.append(" ")
    out.append(text[at:])
    return " ".join("".join(out).replace("*/", " ").split())


def cmd_form(plain: str) -> str:
    """`plain` as a shell would read its words: quotes, backslashes, carets and brackets
    dropped, braces and commas as spaces, ``$IFS`` and ``$@`` undone, no space before ``/``.
    Lines stay lines."""
    text = plain
    for char, replacement in _CMD_DROP:
        if char in text:
            text = text.replace(char, replacement)
    if "," in text:  # ", " first (where no " /" or " (" can follow): no space to compress
        if "/" not in text and "(" not in text:
            text = text.replace(", ", " ")
        text = text.replace(",", " ")
    if "$" in text:
        text = text.replace("${ifs}", " ").replace("$ifs$9", " ").replace("$ifs", " ").replace("$@", "")
    if ("/" in text and " /" in text) or ("(" in text and " (" in text):  # memchr first
        text = text.replace(" /", "/").replace(" (", "(")
    # `plain` was compressed: its only whitespace is " " and line breaks, and so is this one's
    return _compress_lines(text, True) if "\n" in text else " ".join(text.split())


def _compress_lines(text: str, printable: bool | None = None) -> str:
    """Whitespace runs → one space, line by line (lines are values). `printable`: whether
    `text` is printable but for its line breaks, if the caller knows."""
    if printable is None:
        printable = _printable_lines(text)
    if printable:  # the only whitespace: " " and "\n"
        if len(text) >= LONG and _LOOSE.search(text) is None:  # one scan, not three
            return text.strip(" ")
        if "  " in text:
            while "  " in text:  # each pass halves every run: at most log2(len) passes
                text = text.replace("  ", " ")
        if " \n" in text or "\n " in text:
            text = text.replace(" \n", "\n").replace("\n ", "\n")
        return text.strip(" ")  # no per-line work: the usual case
    return "\n".join(" ".join(line.split()) for line in text.split("\n"))
