"""An exchange's rule facts and its access record: the one record builder every data plane,
and `proxylog redact-test`, use."""

from __future__ import annotations

import time

from proxylog.config import RecordSpec
from proxylog.pipeline.exchange import Exchange
from proxylog.pipeline.text import text
from proxylog.record import AccessRecord
from proxylog.redact.bodies import BodyParser
from proxylog.rules.types import RequestFacts

# Header names as the rules see them (str), decoded once per distinct name: a site sends a
# few dozen, so the cache stays small; a client inventing names only ever adds to a bounded one.
_NAME_CACHE: dict[bytes, str] = {}
_NAME_CACHE_MAX = 4096


def _names(raw: tuple[bytes, ...]) -> frozenset[str]:
    cache = _NAME_CACHE
    out = []
    for name in raw:
        text_name = cache.get(name)
        if text_name is None:
            text_name = name.decode("latin-1")
            if len(cache) < _NAME_CACHE_MAX:
                cache[name] = text_name
        out.append(text_name)
    return frozenset(out)


# Headers request inspection reads (besides User-Agent): what apps echo or parse. X-* headers
# proxylog itself sets or rewrites are left out.
_INSPECTED = frozenset({b"cookie", b"referer"})
_NOT_INSPECTED = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port", b"x-request-id"}
)


def facts_for(ex: Exchange, spec: RecordSpec, *, inspect: bool = False) -> RequestFacts:
    """What the rule engine sees of this request (raw path and query, log-safe text); with
    `inspect`, also the values of the headers request inspection reads."""
    headers: tuple[tuple[str, str], ...] = ()
    if inspect:
        headers = tuple(
            (lname.decode("latin-1"), value.decode("latin-1"))
            for name, value in ex.upstream_headers
            if (lname := name.lower()) in _INSPECTED or (lname[:2] == b"x-" and lname not in _NOT_INSPECTED)
        )
    return RequestFacts(
        ts=ex.started,
        client_ip=ex.identity.ip,
        method=ex.method_text,
        path=ex.path_text,
        query=ex.query_text,
        user_agent=ex.user_agent,
        header_names=_names(ex.header_names),
        host=ex.domain_text,
        resolved=ex.identity.resolved,
        headers=headers,
        content_type=None if ex.content_type is None else ex.content_type.decode("latin-1"),
    )


def record_for(
    ex: Exchange, spec: RecordSpec, now: float | None = None, body_parser: BodyParser | None = None
) -> AccessRecord:
    """The access record for a finished (or failed) exchange; pure apart from reading the
    clock. With a `body_parser` (opt-in body capture), a buffered request body is parsed
    into ``request_body`` for the redactor to clean."""
    now = time.time() if now is None else now
    truncated = ex.truncated
    captured_body = None
    if body_parser is not None and ex.request_content:
        content_type = None if ex.content_type is None else ex.content_type.decode("latin-1")
        captured_body = body_parser(content_type, ex.request_content)
    status = ex.status
    upstream_ms = None
    if not ex.replied and ex.request_ended and ex.response_started:
        upstream_ms = round((ex.response_started - ex.request_ended) * 1000, 3)
    responded = status is not None
    return AccessRecord(
        timestamp=ex.started,
        request_id=ex.request_id,
        method=ex.method_text,
        scheme=ex.scheme,
        domain=ex.domain_text,
        path=ex.path_text,
        query=ex.query_text,
        http_version=ex.version.decode("latin-1").removeprefix("HTTP/"),
        client_ip=ex.identity.ip,
        source_ip=ex.identity.peer,
        source_port=ex.peer_port,
        user_agent=ex.user_agent,
        request_headers=ex.captured,
        response_headers=() if ex.replied else ex.response_captured,
        status=status,
        request_bytes=ex.request_head_bytes + ex.request_body_bytes,
        request_body_bytes=ex.request_body_bytes,
        response_bytes=ex.response_head_bytes + ex.response_body_bytes if responded else 0,
        response_body_bytes=ex.response_body_bytes if responded else 0,
        duration_ns=max(0, int((now - ex.started) * 1_000_000_000)),
        upstream_ms=upstream_ms,
        action=ex.action,
        error_type=ex.error_type,
        error_message=None
        if ex.error_message is None
        else text(ex.error_message, "error.message", spec, truncated),
        mode=ex.mode,
        enforced=ex.enforced,
        tags=ex.tags,
        rules=ex.hits,
        ban_rule=ex.ban_rule,
        truncated=tuple(truncated),
        request_body=captured_body,
        url_port=_port(ex.host),
    )


def _port(host: bytes) -> int | None:
    """The port a Host value names (``app:8080`` → 8080, ``[::1]:3000`` → 3000), if any."""
    _, sep, port = host.rpartition(b":")
    if not sep or not port.isdigit() or (host.startswith(b"[") and not host[: -len(port) - 1].endswith(b"]")):
        return None
    value = int(port)
    return value if 0 < value < 65536 else None
