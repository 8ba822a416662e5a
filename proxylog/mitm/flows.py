"""Translation between mitmproxy flows and proxylog values: identity, headers, the record."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from mitmproxy import http

from proxylog.config import RecordSpec
from proxylog.identity import ClientIdentity, TrustedProxies, is_valid_request_id, new_request_id
from proxylog.record import ALLOW, AccessRecord, Decision, ErrorType, cap_text

META = "proxylog"

# Headers a client may use to lie about who or where it is. Puma maps `_` and `-` alike,
# so the underscore spellings of these are stripped too.
_ALWAYS_STRIPPED = frozenset(
    {
        b"client-ip",
        b"x-real-ip",
        b"forwarded",
        b"true-client-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"x-forwarded",
        b"x-forwarded-ssl",
        b"x-forwarded-scheme",
        b"x-url-scheme",
        b"front-end-https",
    }
)
# Set by proxylog; kept from the peer only when the peer is a trusted proxy.
_FROM_TRUSTED = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"})
_REWRITTEN = frozenset({b"x-forwarded-for", b"x-request-id"})
_UNDERSCORE_CHECKED = (
    _ALWAYS_STRIPPED | _FROM_TRUSTED | _REWRITTEN | {b"content-length", b"content-type", b"transfer-encoding"}
)
_PROXYLOG_PREFIX = b"x-proxylog-"


class ByteCounter:
    """A `stream` callable that counts body bytes as they pass, storing nothing."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0

    def __call__(self, chunk: bytes) -> bytes:
        self.bytes += len(chunk)
        return chunk


@dataclass(slots=True)
class FlowState:
    """What proxylog keeps on a flow between hooks, under ``flow.metadata["proxylog"]``."""

    request_id: str
    identity: ClientIdentity
    request_head_bytes: int
    captured: tuple[tuple[str, str], ...]
    user_agent: str | None
    truncated: list[str] = field(default_factory=list)
    decision: Decision = ALLOW
    enforced: bool = False
    request_counter: ByteCounter | None = None
    response_counter: ByteCounter | None = None
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    error_type: ErrorType | None = None
    error_message: str | None = None
    replied_status: int | None = None
    replied_bytes: int = 0
    mode: str = "monitor"
    done: bool = False

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def state_of(flow: http.HTTPFlow) -> FlowState | None:
    return flow.metadata.get(META)


def text(raw: bytes | str, name: str, spec: RecordSpec, truncated: list[str]) -> str:
    """Request data as log-safe text: invalid UTF-8 as ``\\xNN``, capped, truncation noted."""
    if isinstance(raw, bytes):
        value = raw.decode("utf-8", "backslashreplace")
    elif raw.isascii():
        value = raw
    else:  # mitmproxy decodes with surrogateescape; surrogates cannot be JSON-encoded
        value = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    value, cut = cap_text(value, spec.max_field_bytes)
    if cut:
        truncated.append(name)
    return value


def _head_bytes(first_line: int, fields: tuple[tuple[bytes, bytes], ...]) -> int:
    return first_line + 2 + sum(len(k) + len(v) + 4 for k, v in fields) + 2


def start_flow(flow: http.HTTPFlow, trusted: TrustedProxies, spec: RecordSpec) -> FlowState:
    """Identify the client, capture what the record needs from the raw request headers, and
    rewrite the forwarding headers Puma will see. Called once per request, in requestheaders."""
    request = flow.request
    fields = request.headers.fields
    forwarded_for = [v.decode("latin-1") for k, v in fields if k.lower() == b"x-forwarded-for"]
    identity = trusted.resolve(flow.client_conn.peername[0], forwarded_for)
    peer_trusted = len(identity.chain) > 1 or trusted.is_trusted(identity.peer)

    truncated: list[str] = []
    captured = tuple(
        (name, text(value, f"http.request.headers.{name}", spec, truncated))
        for name in spec.headers
        if (value := request.headers.get(name)) is not None
    )
    agent = request.headers.get("user-agent")
    user_agent = None if agent is None else text(agent, "user_agent.original", spec, truncated)

    kept: list[tuple[bytes, bytes]] = []
    client_request_id: str | None = None
    trusted_values: dict[bytes, bytes] = {}
    for name, value in fields:
        lname = name.lower()
        norm = lname.replace(b"_", b"-")
        if norm != lname and norm in _UNDERSCORE_CHECKED:
            continue
        if norm in _ALWAYS_STRIPPED or norm in _REWRITTEN or norm.startswith(_PROXYLOG_PREFIX):
            if norm == b"x-request-id":
                client_request_id = value.decode("latin-1")
            continue
        if norm in _FROM_TRUSTED:
            if peer_trusted:
                trusted_values.setdefault(norm, value)
            continue
        kept.append((name, value))

    request_id = (
        client_request_id
        if client_request_id is not None and is_valid_request_id(client_request_id)
        else new_request_id()
    )
    proto = trusted_values.get(b"x-forwarded-proto") or (
        b"https" if flow.client_conn.tls_established else b"http"
    )
    host = trusted_values.get(b"x-forwarded-host") or (request.host_header or "").encode(
        "utf-8", "surrogateescape"
    )
    kept.append((b"X-Forwarded-For", ", ".join(identity.chain).encode("ascii")))
    kept.append((b"X-Forwarded-Proto", proto))
    if host:
        kept.append((b"X-Forwarded-Host", host))
    if port := trusted_values.get(b"x-forwarded-port"):
        kept.append((b"X-Forwarded-Port", port))
    kept.append((b"X-Request-Id", request_id.encode("ascii")))
    request.headers.fields = tuple(kept)
    if request.data.authority and request.http_version.startswith("HTTP/1"):
        request.data.authority = b""  # absolute-form: Puma gets origin-form, Host decides

    first_line = len(request.data.method) + len(request.data.path) + len(request.data.http_version) + 2
    state = FlowState(
        request_id=request_id,
        identity=identity,
        request_head_bytes=_head_bytes(first_line, fields),
        captured=captured,
        user_agent=user_agent,
        truncated=truncated,
    )
    flow.metadata[META] = state
    return state


def status_sent(flow: http.HTTPFlow, state: FlowState) -> int | None:
    """The status the client received: proxylog's own reply, or the upstream's once streamed
    or fully received; None when the client got no response at all."""
    if state.replied_status is not None:
        return state.replied_status
    if flow.response is None:
        return None
    if flow.error is None or flow.response.stream:
        return flow.response.status_code
    return None


def record_from_flow(
    flow: http.HTTPFlow, state: FlowState, spec: RecordSpec, now: float | None = None
) -> AccessRecord:
    """The access record for a finished (or failed) flow; pure apart from reading the clock."""
    request = flow.request
    response = flow.response
    now = time.time() if now is None else now
    truncated = state.truncated
    raw_path, sep, raw_query = request.data.path.partition(b"?")
    path = text(raw_path, "url.path", spec, truncated)
    query = text(raw_query, "url.query", spec, truncated) if sep else None
    domain = text(request.pretty_host, "url.domain", spec, truncated)

    request_body = (
        state.request_counter.bytes if state.request_counter is not None else len(request.raw_content or b"")
    )
    status = status_sent(flow, state)
    response_headers: tuple[tuple[str, str], ...] = ()
    response_body = response_head = 0
    upstream_ms = None
    if state.replied_status is not None:
        response_head = state.replied_bytes
    elif response is not None:
        response_body = (
            state.response_counter.bytes
            if state.response_counter is not None
            else len(response.raw_content or b"")
        )
        response_head = _head_bytes(
            len(response.data.http_version) + len(response.data.reason) + 4,
            response.headers.fields,
        )
        if spec.response_headers:
            response_headers = tuple(
                (name, text(value, f"http.response.headers.{name}", spec, truncated))
                for name in spec.response_headers
                if (value := response.headers.get(name)) is not None
            )
        if request.timestamp_end and response.timestamp_start:
            upstream_ms = round((response.timestamp_start - request.timestamp_end) * 1000, 3)

    decision = state.decision
    return AccessRecord(
        timestamp=request.timestamp_start,
        request_id=state.request_id,
        method=text(request.data.method, "http.request.method", spec, truncated),
        scheme=request.scheme,
        domain=domain,
        path=path,
        query=query,
        http_version=request.http_version.removeprefix("HTTP/"),
        client_ip=state.identity.ip,
        source_ip=state.identity.peer,
        source_port=flow.client_conn.peername[1],
        user_agent=state.user_agent,
        request_headers=state.captured,
        response_headers=response_headers,
        status=status,
        request_bytes=state.request_head_bytes + request_body,
        request_body_bytes=request_body,
        response_bytes=response_head + response_body if status is not None else 0,
        response_body_bytes=response_body if status is not None else 0,
        duration_ns=max(0, int((now - request.timestamp_start) * 1_000_000_000)),
        upstream_ms=upstream_ms,
        action=decision.action,
        error_type=state.error_type,
        error_message=state.error_message,
        mode=state.mode,
        enforced=state.enforced,
        tags=decision.tags,
        rules=decision.rules,
        truncated=tuple(truncated),
    )
