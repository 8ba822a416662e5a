"""The access record: one frozen value per request, and its ECS JSON encoding."""

from __future__ import annotations

import functools
import ipaddress
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NamedTuple

import orjson

from proxylog import __version__

# The ECS release these documents follow (checked field by field in tests/test_ecs.py), and
# the version of proxylog's own layout under `proxylog.*`: bumped when a field moves.
ECS_VERSION = "9.0.0"
SCHEMA_VERSION = 2
RULESET = "proxylog"
_ECS = {"version": ECS_VERSION}
OBSERVER: dict[str, str] = {
    "type": "proxy",
    "product": "proxylog",
    "vendor": "proxylog",
    "version": __version__,
    "hostname": socket.gethostname(),
}


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
    families: tuple[str, ...] = ()  # their attack families (sqli, xss, …), highest score first


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
    url_port: int | None = None  # the port the client addressed (Host), when it named one
    ban_rule: str | None = None  # the rule of a ban covering the client (refused for it)


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


# The captured request headers that have an ECS field of their own under `http.request`.
# Content-Type has none: ECS's `http.*.mime_type` must come from sniffing the body, never
# from the header, so captured Content-Type values stay under `proxylog.http`.
_ECS_REQUEST_HEADERS = {"referer": "referrer"}
_ACTION_TYPE = {"blocked": "denied", "would_block": "allowed"}


def _deciding_rule(record: AccessRecord) -> dict[str, str] | None:
    """ECS `rule.*` for the rule that reached its threshold on this request, else for the
    rule whose ban covers the client, if any; for an inspection rule, `category` is its
    highest-scoring attack family and `description` the score, the CRS ids and every family."""
    for hit in record.rules:
        if hit.count >= hit.threshold:
            rule = {"id": hit.id, "name": hit.id, "ruleset": RULESET}
            if hit.score is not None and hit.families:
                rule["category"] = hit.families[0]
                rule["description"] = (
                    f"anomaly score {hit.score}: {' '.join(hit.matched)} ({', '.join(hit.families)})"
                )
            return rule
    if record.ban_rule is not None:
        return {"id": record.ban_rule, "name": record.ban_rule, "ruleset": RULESET}
    return None


def to_ecs(record: AccessRecord) -> dict[str, Any]:
    """The nested ECS document for a record (Elastic/OpenSearch ingest it as is): ECS fields
    where ECS has one, everything else under `proxylog`."""
    request: dict[str, Any] = {
        "id": record.request_id,
        "method": record.method,
        "bytes": record.request_bytes,
        "body": {"bytes": record.request_body_bytes},
    }
    proxylog: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "mode": record.mode,
        "enforced": record.enforced,
    }
    if record.request_headers:
        other = {}
        for name, value in record.request_headers:
            if (ecs_name := _ECS_REQUEST_HEADERS.get(name)) is not None:
                request[ecs_name] = value
            else:
                other[name] = value
        if other:
            proxylog["http"] = {"request": {"headers": other}}
    if record.request_body is not None:
        body = record.request_body
        request["body"]["content"] = body if isinstance(body, str) else orjson.dumps(body).decode()
    http: dict[str, Any] = {"version": record.http_version, "request": request}
    if record.status is not None:
        http["response"] = {
            "status_code": record.status,
            "bytes": record.response_bytes,
            "body": {"bytes": record.response_body_bytes},
        }
        if record.response_headers:
            proxylog.setdefault("http", {})["response"] = {"headers": dict(record.response_headers)}
    url: dict[str, Any] = {"path": record.path, "domain": record.domain, "scheme": record.scheme}
    if record.query is not None:
        url["query"] = record.query
        url["original"] = f"{record.path}?{record.query}"
    else:
        url["original"] = record.path
    if record.url_port is not None:
        url["port"] = record.url_port
    if record.rules:
        proxylog["rules"] = [_hit(h) for h in record.rules]
    if record.upstream_ms is not None:
        proxylog["upstream"] = {"duration_ms": record.upstream_ms}
    if record.truncated:
        proxylog["truncated"] = list(record.truncated)
    categories, types = ["web"], ["access"]
    if (decision := _ACTION_TYPE.get(record.action)) is not None:
        categories.append("intrusion_detection")
        types.append(decision)
    if record.error_type is not None:
        types.append("error")
    event: dict[str, Any] = {
        "kind": "event",
        "category": categories,
        "type": types,
        "action": record.action,
        "outcome": _outcome(record),
        "duration": record.duration_ns,
        "dataset": "proxylog.access",
        "module": "proxylog",
    }
    client: dict[str, Any] = {"ip": record.client_ip}
    doc: dict[str, Any] = {
        "@timestamp": format_timestamp(record.timestamp),
        "ecs": _ECS,
        "event": event,
        "http": http,
        "url": url,
        "client": client,
        "source": {"ip": record.source_ip, "port": record.source_port},
    }
    if record.client_ip == record.source_ip:
        client["port"] = record.source_port
    else:  # the peer is a trusted proxy that named the client
        doc["network"] = {"forwarded_ip": record.client_ip}
    if record.user_agent is not None:
        doc["user_agent"] = {"original": record.user_agent}
    if record.error_type is not None:
        doc["error"] = {"type": record.error_type, "message": record.error_message or ""}
    if (rule := _deciding_rule(record)) is not None:
        doc["rule"] = rule
    if record.tags:
        doc["tags"] = list(record.tags)
    doc["observer"] = OBSERVER
    doc["proxylog"] = proxylog
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


# action → (event.kind, event.type, event.dataset) of the events proxylog writes beside
# access records; an `audit.*` action is an audit.
_EVENTS: dict[str, tuple[str, str, str]] = {
    "alert": ("alert", "info", "proxylog.alert"),
    "records_dropped": ("event", "info", "proxylog.delivery"),
    "worker.restarted": ("event", "start", "proxylog.event"),
    "records_quarantined": ("event", "info", "proxylog.delivery"),
    "sink_recovered": ("event", "info", "proxylog.delivery"),
    "integrity_chain_start": ("event", "start", "proxylog.integrity"),
    "integrity_chain_end": ("event", "end", "proxylog.integrity"),
}
_AUDIT = ("event", "change", "proxylog.audit")
_OTHER = ("event", "info", "proxylog.event")
# Keys under `proxylog.*` that hold a point in time: written as RFC 3339 dates, like @timestamp.
DATE_KEYS = frozenset({"ts", "since", "until", "expires"})
# Alert kinds whose key is a client address (ECS `client.ip`) and whose rule is a rule id.
_CLIENT_ALERTS = frozenset({"rule_fired", "ban"})


def _with_dates(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with every epoch number under a DATE_KEYS name turned into an RFC 3339 date."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            value = _with_dates(value)
        elif key in DATE_KEYS and isinstance(value, int | float) and not isinstance(value, bool):
            value = format_timestamp(value)
        out[key] = value
    return out


def _base(ts: float | None, event: dict[str, Any], proxylog: dict[str, Any]) -> dict[str, Any]:
    return {
        "@timestamp": format_timestamp(time.time() if ts is None else ts),
        "ecs": _ECS,
        "event": {**event, "module": "proxylog"},
        "observer": OBSERVER,
        "proxylog": {"schema_version": SCHEMA_VERSION, **_with_dates(proxylog)},
    }


def event_document(action: str, category: str, ts: float | None = None, **proxylog: Any) -> dict[str, Any]:
    """A non-access event in the same stream (markers, audits, alerts, integrity seals): its
    ECS kind, type and dataset come from the action; its own fields go under `proxylog`,
    times as dates."""
    kind, type_, dataset = _AUDIT if action.startswith("audit.") else _EVENTS.get(action, _OTHER)
    event: dict[str, Any] = {"kind": kind, "category": [category], "type": [type_], "action": action}
    event["dataset"] = dataset
    doc = _base(ts, event, proxylog)
    audit = doc["proxylog"].get("audit")
    if isinstance(audit, dict):
        if isinstance(audit.get("ok"), bool):
            event["outcome"] = "success" if audit["ok"] else "failure"
        # One index mapping for every command: a structured old or new value (a ban) is JSON
        # text, like the plain ones (a mode, an address), never an object beside a string.
        for name in ("old", "new"):
            if isinstance(audit.get(name), dict | list):
                audit[name] = orjson.dumps(audit[name]).decode()
    alert = proxylog.get("alert")
    if action == "alert" and isinstance(alert, dict) and alert.get("kind") in _CLIENT_ALERTS:
        if is_ip(alert.get("key")):
            doc["client"] = {"ip": alert["key"]}
        if isinstance(alert.get("rule"), str):
            doc["rule"] = {"id": alert["rule"], "name": alert["rule"], "ruleset": RULESET}
    return doc


def ban_document(
    action: Literal["ban", "unban"],
    key: str,
    rule: str,
    ts: float,
    *,
    since: float | None = None,
    until: float | None = None,
    **proxylog: Any,
) -> dict[str, Any]:
    """A ban imposed (`ban`) or ended (`unban`, lifted or expired) as an ECS event: the banned
    address in `client.ip` (a CIDR stays in `proxylog.ban.key` only), the rule in `rule.*`,
    the ban's span in `event.start`/`event.end` (for an unban, `event.end` is when it ended and
    `proxylog.ban.until` when it was due to)."""
    types = ["denied", "start"] if action == "ban" else ["allowed", "end"]
    event: dict[str, Any] = {
        "kind": "event",
        "category": ["intrusion_detection", "network"],
        "type": types,
        "action": action,
        "dataset": "proxylog.ban",
    }
    if since is not None:
        event["start"] = format_timestamp(since)
    end = until if action == "ban" else ts  # when the ban runs out; when it ended
    if end is not None:
        event["end"] = format_timestamp(end)
    ban = {"key": key, "rule": rule, "since": since, "until": until, **proxylog}
    doc = _base(ts, event, {"ban": {name: value for name, value in ban.items() if value is not None}})
    if is_ip(key):
        doc["client"] = {"ip": key}
    doc["rule"] = {"id": rule, "name": rule, "ruleset": RULESET}
    return doc


def is_ip(value: object) -> bool:
    """Whether `value` is a single IP address (not a CIDR, not a name)."""
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
