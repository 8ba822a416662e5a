"""Opt-in request body capture (``redact.body.capture``): form and JSON bodies parsed into a
bounded structure that the Redactor then cleans (secret keys at any depth, detectors).

The parser never raises: bytes it cannot or should not parse (too large, another content
type, compressed, malformed) give None, and the record carries no body content. Every
string in the result is log-safe text (non-printable characters escaped, as elsewhere in
the record); depth and item counts are capped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

import orjson

from proxylog.config.redact import BodySpec, RedactSpec
from proxylog.record import cap_text

logger = logging.getLogger("proxylog.redact.bodies")

BodyParser = Callable[[str | None, bytes], Any]
CUT = "[truncated]"


class _Budget:
    """Items left to copy; once spent, the rest of the body is replaced by CUT."""

    __slots__ = ("items",)

    def __init__(self, items: int) -> None:
        self.items = items

    def take(self) -> bool:
        self.items -= 1
        return self.items >= 0


class BodyCapture:
    """A BodyParser for one config: content type → parsed, capped structure or None."""

    def __init__(self, spec: BodySpec) -> None:
        self.spec = spec
        self._parsers: dict[str, Callable[[bytes], Any]] = {
            "application/json": self._json,
            "application/x-www-form-urlencoded": self._form,
        }

    def __call__(self, content_type: str | None, raw: bytes) -> Any:
        """The captured body, or None; never raises (a parser bug is logged without data)."""
        if not raw or len(raw) > self.spec.max_bytes or content_type is None:
            return None
        parse = self._parsers.get(_media_type(content_type))
        if parse is None:
            return None
        try:
            return parse(raw)
        except Exception as e:
            logger.warning("request body not captured: %s", type(e).__name__)
            return None

    def _json(self, raw: bytes) -> Any:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return self._copy(value, 0, _Budget(self.spec.max_items))

    def _form(self, raw: bytes) -> Any:
        text = raw.decode("utf-8", "backslashreplace")
        budget = _Budget(self.spec.max_items)
        fields: dict[str, Any] = {}
        for group in text.split("&"):
            for pair in group.split(";"):  # Rack 2 split on ";" too: redact what an app may read
                if not pair:
                    continue
                if not budget.take():
                    fields[CUT] = CUT
                    return fields
                key, _, value = pair.partition("=")
                name = self._text(unquote_plus(key, errors="backslashreplace"))
                item = self._text(unquote_plus(value, errors="backslashreplace"))
                previous = fields.get(name)
                if previous is None:
                    fields[name] = item
                elif isinstance(previous, list):
                    previous.append(item)
                else:
                    fields[name] = [previous, item]
        return fields

    def _copy(self, value: Any, depth: int, budget: _Budget) -> Any:
        """A copy of parsed JSON with log-safe strings and JSON-encodable numbers; containers
        nested deeper than `max_depth` and items past `max_items` are cut."""
        if not budget.take():
            return CUT
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, dict | list) and depth >= self.spec.max_depth:
            return CUT
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                copied = self._copy(item, depth + 1, budget)
                out[self._text(key)] = copied
                if copied is CUT and budget.items < 0:
                    break
            return out
        if isinstance(value, list):
            items = []
            for item in value:
                copied = self._copy(item, depth + 1, budget)
                items.append(copied)
                if copied is CUT and budget.items < 0:
                    break
            return items
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
            return str(value)  # orjson cannot encode it back
        return value

    def _text(self, value: str) -> str:
        return cap_text(value, self.spec.max_bytes)[0]


def _media_type(content_type: str) -> str:
    """``application/json; charset=utf-8`` → ``application/json``; ``+json`` types are JSON."""
    media = content_type.partition(";")[0].strip().lower()
    if media.endswith("+json"):
        return "application/json"
    return media


def build_body_parser(spec: RedactSpec) -> BodyParser | None:
    """A parser (content type, raw body) → captured structure, or None when capture is off."""
    return BodyCapture(spec.body) if spec.body.capture else None
