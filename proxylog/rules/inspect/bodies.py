"""Request bodies as named values: form, JSON and multipart bodies parsed, anything else
textual taken whole. Bounded: at most `limit` values, JSON at most `MAX_DEPTH` deep."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

MAX_DEPTH = 32
Pair = tuple[str | None, str, bool]  # (name, value, URL-encoded: `+` means a space)


def body_pairs(body: bytes, content_type: str | None, limit: int) -> Iterator[Pair]:
    """The (name, value, form-encoded) pairs of a body, at most `limit` of them."""
    ctype = (content_type or "").lower()
    if is_form(body, content_type):
        yield from form_pairs(body.decode("latin-1"), limit)
    elif "json" in ctype:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            yield None, body.decode("utf-8", "replace"), False
            return
        for count, pair in enumerate(_json_pairs(doc, "", 0), 1):
            yield pair
            if count >= limit:
                return
    elif "multipart/" in ctype:
        yield from _multipart(body, ctype, limit)
    elif _textual(ctype) and b"\x00" not in body[:512]:
        yield None, body.decode("utf-8", "replace"), False


def is_form(body: bytes, content_type: str | None) -> bool:
    """Whether a body is read as ``a=1&b=2`` form fields."""
    ctype = (content_type or "").lower()
    return "x-www-form-urlencoded" in ctype or (not ctype and _looks_like_form(body))


def form_pairs(text: str, limit: int) -> Iterator[Pair]:
    """``a=1&b=2`` → ("a", "1", True), ("b", "2", True); at most `limit` pairs."""
    for count, part in enumerate(text.split("&", limit)):
        if count >= limit:
            return
        if part:
            name, _, value = part.partition("=")
            yield name, value, True


def _textual(ctype: str) -> bool:
    return not ctype or ctype.startswith("text/") or "xml" in ctype or "javascript" in ctype


def _looks_like_form(body: bytes) -> bool:
    head = body[:256]
    return b"=" in head and b"\x00" not in head and not head.lstrip().startswith((b"{", b"[", b"<"))


def _json_pairs(node: Any, path: str, depth: int) -> Iterator[Pair]:
    if depth > MAX_DEPTH:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            name = f"{path}.{key}" if path else str(key)
            yield name, "", False
            yield from _json_pairs(value, name, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from _json_pairs(item, path, depth + 1)
    elif isinstance(node, str):
        yield None, node, False


def _multipart(body: bytes, ctype: str, limit: int) -> Iterator[Pair]:
    _, found, boundary = ctype.partition("boundary=")
    if not found:
        return
    marker = b"--" + boundary.split(";")[0].strip().strip('"').encode("latin-1")
    for count, part in enumerate(body.split(marker, limit + 1)[1:]):
        if count >= limit:
            return
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = head.decode("latin-1").lower()
        name = _param(disposition, "name")
        filename = _param(disposition, "filename")
        if filename is not None:
            yield name, filename, False
            continue
        yield name, content.removesuffix(b"\r\n").decode("utf-8", "replace"), False


def _param(disposition: str, key: str) -> str | None:
    at = disposition.find(f" {key}=")
    if at < 0:
        at = disposition.find(f";{key}=")
    if at < 0:
        return None
    rest = disposition[at + len(key) + 2 :]
    if rest.startswith('"'):
        return rest[1:].partition('"')[0]
    return rest.partition(";")[0].strip()
