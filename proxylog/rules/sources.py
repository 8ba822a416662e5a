"""Historical requests for replay: proxylog's JSONL (nested or flat), nginx/Apache combined logs,
and the normalised corpus JSONL of the test data, each turned into RequestFacts and a status."""

from __future__ import annotations

import functools
import gzip
import io
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from proxylog.rules.types import RequestFacts

_COMBINED = re.compile(
    r'^(?P<ip>\S+) \S+ \S+ \[(?P<ts>[^\]]+)\] "(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}|-) \S+'
    r'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)")?'
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One historical request: what the engine sees, and the status the client received."""

    facts: RequestFacts
    status: int | None


class ParseError(ValueError):
    """A line that is none of the supported formats."""


@functools.lru_cache(maxsize=4096)
def parse_timestamp(text: str) -> float:
    """Seconds since the epoch from ``10/Oct/2000:13:55:36 -0700`` (CLF), RFC 3339 / ISO 8601
    (``Z`` or an offset; no offset means UTC) or a number; raises ValueError."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    if "/" in text[:7]:
        return datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z").timestamp()
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _split_target(target: str) -> tuple[str, str | None]:
    path, sep, query = target.partition("?")
    return path, (query if sep else None)


def _agent(value: object) -> str | None:
    """A User-Agent as logged: ``-`` (combined logs) means none was sent."""
    return value if isinstance(value, str) and value != "-" else None


def facts_from_combined(line: str) -> Entry:
    """An nginx/Apache common or combined log line; raises ParseError."""
    match = _COMBINED.match(line)
    if match is None:
        raise ParseError("not a combined log line")
    parts = match.group("request").split(" ")
    method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("", match.group("request"))
    path, query = _split_target(target)
    agent = _agent(match.group("agent"))
    names = {"user-agent"} if agent else set()
    if match.group("referer") not in (None, "-", ""):
        names.add("referer")
    status = match.group("status")
    facts = RequestFacts(
        ts=parse_timestamp(match.group("ts")),
        client_ip=match.group("ip"),
        method=method,
        path=path,
        query=query,
        user_agent=agent,
        header_names=frozenset(names),
        host="",
    )
    return Entry(facts, int(status) if status.isdigit() else None)


def _dig(doc: dict[str, Any], dotted: str) -> Any:
    """`doc["a"]["b"]` for ``a.b`` in a nested record, or `doc["a.b"]` in a flat one."""
    if dotted in doc:
        return doc[dotted]
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _record_headers(doc: dict[str, Any]) -> dict[str, Any]:
    """The request headers a record captured, by name: ECS `http.request.referrer`, the rest
    under `proxylog.http.request.headers` (or `http.request.headers`, schema_version 1)."""
    referrer = _dig(doc, "http.request.referrer")
    headers: dict[str, Any] = {"referer": referrer} if referrer is not None else {}
    for where in ("proxylog.http.request.headers", "http.request.headers"):
        nested = _dig(doc, where)
        headers.update(nested if isinstance(nested, dict) else {})
        prefix = where + "."
        headers.update((key[len(prefix) :], value) for key, value in doc.items() if key.startswith(prefix))
    return headers


def _record_body(doc: dict[str, Any], headers: dict[str, Any]) -> tuple[bytes | None, str | None]:
    """A captured request body (as logged, so redacted) and the Content-Type to read it by:
    JSON when it was captured parsed (a form's fields are logged as a JSON object), else the
    captured Content-Type header, if any."""
    content = _dig(doc, "http.request.body.content")
    if not isinstance(content, str) or not content:
        return None, None
    ctype = "application/json" if content.lstrip()[:1] in ("{", "[") else headers.get("content-type")
    return content.encode("utf-8", "surrogateescape"), ctype if isinstance(ctype, str) else None


def facts_from_record(doc: dict[str, Any]) -> Entry:
    """A proxylog access record (nested ECS or flat dotted keys); raises ParseError for other
    events in the stream (dropped-record markers, alerts)."""
    path = _dig(doc, "url.path")
    timestamp = doc.get("@timestamp")
    if not isinstance(path, str) or not isinstance(timestamp, str):
        raise ParseError("not an access record")
    agent = _agent(_dig(doc, "user_agent.original"))
    headers = _record_headers(doc)
    names = set(headers) | ({"user-agent"} if agent else set())
    status = _dig(doc, "http.response.status_code")
    body, content_type = _record_body(doc, headers)
    facts = RequestFacts(
        ts=parse_timestamp(timestamp),
        client_ip=str(_dig(doc, "client.ip") or _dig(doc, "source.ip") or ""),
        method=str(_dig(doc, "http.request.method") or ""),
        path=path,
        query=_dig(doc, "url.query"),
        user_agent=agent,
        header_names=frozenset(names),
        host=str(_dig(doc, "url.domain") or ""),
        headers=_inspected(headers),
        body=body,
        content_type=content_type,
    )
    return Entry(facts, status if isinstance(status, int) else None)


def _inspected(headers: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The headers inspection reads (Cookie, Referer, X-*), lower-case names, as strings."""
    return tuple(
        (k, str(v)) for k, v in headers.items() if v is not None and (k in _INSPECTED or k[:2] == "x-")
    )


def facts_from_corpus(doc: dict[str, Any], default_ts: float = 0.0) -> Entry:
    """A line of the normalised test corpora: ``{"client_ip", "ts", "method", "path" (with the
    query), "headers", "body", "status"}``; a missing `ts` takes `default_ts`."""
    headers = {str(k).lower(): v for k, v in (doc.get("headers") or {}).items()}
    path, query = _split_target(str(doc.get("path") or ""))
    ts = doc.get("ts")
    status = doc.get("status")
    body = doc.get("body")
    facts = RequestFacts(
        ts=default_ts if ts is None else parse_timestamp(str(ts)),
        client_ip=str(doc.get("client_ip") or ""),
        method=str(doc.get("method") or ""),
        path=path,
        query=query,
        user_agent=_agent(headers.get("user-agent")),
        header_names=frozenset(k for k, v in headers.items() if v is not None),
        host=str(headers.get("host") or ""),
        headers=_inspected(headers),
        body=body.encode("utf-8", "surrogateescape") if isinstance(body, str) and body else None,
        content_type=str(headers["content-type"]) if headers.get("content-type") else None,
    )
    return Entry(facts, status if isinstance(status, int) else None)


_INSPECTED = frozenset({"cookie", "referer"})


def facts_from_json(line: str) -> Entry:
    """A JSON line: a proxylog record, or a corpus line; raises ParseError."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise ParseError(f"invalid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ParseError("not a JSON object")
    if "client_ip" in doc and "path" in doc:
        return facts_from_corpus(doc)
    return facts_from_record(doc)


def _auto(line: str) -> Entry:
    return facts_from_json(line) if line.lstrip().startswith("{") else facts_from_combined(line)


PARSERS: dict[str, Callable[[str], Entry]] = {
    "auto": _auto,
    "jsonl": facts_from_json,
    "combined": facts_from_combined,
}


@dataclass(slots=True)
class Skipped:
    """Lines that were not requests, with the first reason seen."""

    count: int = 0
    first: str | None = None


def read_entries(lines: Iterable[str], fmt: str = "auto", skipped: Skipped | None = None) -> Iterator[Entry]:
    """Parse lines in a format of PARSERS, skipping (and counting) those that are not requests."""
    parse = PARSERS[fmt]
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield parse(line)
        except (ParseError, ValueError, TypeError) as e:
            if skipped is not None:
                skipped.count += 1
                skipped.first = skipped.first or f"line {number}: {e}"


def open_text(path: str) -> IO[str]:
    """A file (``-`` is stdin; ``.gz`` is decompressed) as UTF-8 text with undecodable bytes escaped."""
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="backslashreplace")
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="backslashreplace")
    return open(path, encoding="utf-8", errors="backslashreplace")
