"""The access record: one frozen value per request, and its ECS JSON encoding."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NamedTuple

import orjson


class Mode(StrEnum):
    """The live rule mode: `monitor` records what rules would do, `enforce` does it. A rule or
    intel list may carry its own mode, overriding the live one for its verdicts."""

    MONITOR = "monitor"
    ENFORCE = "enforce"


MODES: tuple[Mode, ...] = tuple(Mode)
Action = Literal["allowed", "blocked", "would_block"]
Schema = Literal["nested", "flat"]
ErrorType = Literal[
    "upstream_connect",
    "upstream_timeout",
    "upstream_reset",
    "client_disconnect",
    "client_timeout",
    "request_invalid",
    "upstream_invalid",
    "body_too_large",
    "shutdown",
    "proxy_error",
]


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One rule that matched this request, with the counter that crossed (or approached) it."""

    id: str
    count: int
    threshold: int
    window_s: float
    score: int | None = None  # an inspection rule's anomaly score for this request
    matched: tuple[str, ...] = ()  # the inspection rule ids (CRS ids) that made the score


class AccessRecord(NamedTuple):
    """Everything proxylog logs about one request; an immutable value built once the request
    ends. Stages that change it (redaction) return a copy via ``record._replace(...)``.

    A NamedTuple rather than a frozen dataclass: it is built for every request, and a frozen
    dataclass's ``__init__`` (one object.__setattr__ per field) cost 4x as much here.
    Header tuples hold only the captured headers, lower-case names first. `status` is the
    status the client received (None when it received none).
    """

    timestamp: float
    request_id: str
    method: str
    scheme: str
    domain: str
    path: str
    query: str | None
    http_version: str
    client_ip: str
    source_ip: str
    source_port: int
    user_agent: str | None = None
    request_headers: tuple[tuple[str, str], ...] = ()
    response_headers: tuple[tuple[str, str], ...] = ()
    status: int | None = None
    request_bytes: int = 0
    request_body_bytes: int = 0
    response_bytes: int = 0
    response_body_bytes: int = 0
    duration_ns: int = 0
    upstream_ms: float | None = None
    action: Action = "allowed"
    error_type: ErrorType | None = None
    error_message: str | None = None
    mode: Mode = Mode.MONITOR
    enforced: bool = False
    tags: tuple[str, ...] = ()
    rules: tuple[RuleHit, ...] = ()
    truncated: tuple[str, ...] = ()
    request_body: Any = None


def cap_text(value: str, max_bytes: int) -> tuple[str, bool]:
    """`value` made safe for a log line: non-printable characters escaped as ``\\uXXXX`` text
    and the result cut to `max_bytes` of UTF-8. Returns (text, truncated)."""
    if len(value) * 4 <= max_bytes and value.isprintable():
        return value, False
    if not value.isprintable():
        value = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in value)
    if len(value) * 4 <= max_bytes:
        return value, False
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return value, False
    return encoded[:max_bytes].decode("utf-8", "ignore"), True


@functools.lru_cache(maxsize=8)
def _second_prefix(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def format_timestamp(ts: float) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-26T16:14:32.123456Z``."""
    second = int(ts)
    return f"{_second_prefix(second)}.{int((ts - second) * 1_000_000):06d}Z"


def _outcome(record: AccessRecord) -> str:
    if record.error_type is not None or (record.action != "allowed" and record.enforced):
        return "failure"
    if record.status is None:
        return "unknown"
    return "success" if record.status < 400 else "failure"


def to_ecs(record: AccessRecord) -> dict[str, Any]:
    """The nested ECS document for a record (Elastic/OpenSearch ingest it as is)."""
    request: dict[str, Any] = {
        "id": record.request_id,
        "method": record.method,
        "bytes": record.request_bytes,
        "body": {"bytes": record.request_body_bytes},
    }
    if record.request_headers:
        request["headers"] = dict(record.request_headers)
    if record.request_body is not None:
        request["body"]["content"] = record.request_body
    http: dict[str, Any] = {"version": record.http_version, "request": request}
    if record.status is not None:
        response: dict[str, Any] = {
            "status_code": record.status,
            "bytes": record.response_bytes,
            "body": {"bytes": record.response_body_bytes},
        }
        if record.response_headers:
            response["headers"] = dict(record.response_headers)
        http["response"] = response
    url: dict[str, Any] = {"path": record.path, "domain": record.domain, "scheme": record.scheme}
    if record.query is not None:
        url["query"] = record.query
    proxylog: dict[str, Any] = {
        "mode": record.mode,
        "enforced": record.enforced,
        "tags": list(record.tags),
    }
    if record.rules:
        proxylog["rules"] = [_hit(h) for h in record.rules]
    if record.upstream_ms is not None:
        proxylog["upstream"] = {"duration_ms": record.upstream_ms}
    if record.truncated:
        proxylog["truncated"] = list(record.truncated)
    doc: dict[str, Any] = {
        "@timestamp": format_timestamp(record.timestamp),
        "event": {
            "kind": "event",
            "category": ["web"],
            "type": ["access"],
            "action": record.action,
            "outcome": _outcome(record),
            "duration": record.duration_ns,
        },
        "http": http,
        "url": url,
        "client": {"ip": record.client_ip},
        "source": {"ip": record.source_ip, "port": record.source_port},
        "proxylog": proxylog,
    }
    if record.user_agent is not None:
        doc["user_agent"] = {"original": record.user_agent}
    if record.error_type is not None:
        doc["error"] = {"type": record.error_type, "message": record.error_message or ""}
    return doc


def _hit(hit: RuleHit) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": hit.id,
        "count": hit.count,
        "threshold": hit.threshold,
        "window_s": hit.window_s,
    }
    if hit.score is not None:
        entry["score"] = hit.score
        entry["matched"] = list(hit.matched)
    return entry


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for jq/Loki users: ``{"url": {"path": "/"}}`` → ``{"url.path": "/"}``."""
    return dict(_flat_items(doc, prefix))


def _flat_items(doc: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            yield from _flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def encode_document(doc: dict[str, Any], schema: Schema = "nested") -> bytes:
    """One NDJSON line for any event document (records, markers, audits, alerts)."""
    if schema == "flat":
        doc = flatten(doc)
    return orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)


def encode_record(record: AccessRecord, schema: Schema = "nested") -> bytes:
    """One NDJSON line for an access record; orjson escapes every C0 control byte."""
    return encode_document(to_ecs(record), schema)


def event_document(action: str, category: str, ts: float | None = None, **proxylog: Any) -> dict[str, Any]:
    """A non-access event in the same stream (dropped markers, audits, alerts)."""
    return {
        "@timestamp": format_timestamp(time.time() if ts is None else ts),
        "event": {"kind": "event", "category": [category], "action": action},
        "proxylog": proxylog,
    }
