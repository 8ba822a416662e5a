"""Translation between mitmproxy flows and proxylog values: identity, headers, the record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mitmproxy import http

from proxylog.bodies import BodyParser
from proxylog.config import RecordSpec
from proxylog.identity import ClientIdentity, TrustedProxies, is_valid_request_id, new_request_id
from proxylog.record import AccessRecord, Action, ErrorType, RuleHit, cap_text
from proxylog.rules import RequestFacts

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

# What start_flow does with a header, by lowercased name, in one dict lookup: the first four
# are dropped (X-Forwarded-For and X-Request-Id are read first), the rest read and forwarded.
_STRIP, _XFF, _REQUEST_ID, _TRUSTED_ONLY, _AGENT, _HOST, _LENGTH, _CHUNKED, _TYPE = range(9)
_HANDLING: dict[bytes, int] = {
    **dict.fromkeys(_ALWAYS_STRIPPED, _STRIP),
    b"x-forwarded-for": _XFF,
    b"x-request-id": _REQUEST_ID,
    **dict.fromkeys(_FROM_TRUSTED, _TRUSTED_ONLY),
    b"user-agent": _AGENT,
    b"host": _HOST,
    b"content-length": _LENGTH,
    b"transfer-encoding": _CHUNKED,
    b"content-type": _TYPE,
}


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
    host: bytes
    host_headers: int
    chunked_upload: bool
    content_type: bytes | None
    header_names: tuple[bytes, ...]
    truncated: list[str] = field(default_factory=list)
    facts: RequestFacts | None = None
    action: Action = "allowed"
    tags: tuple[str, ...] = ()
    hits: tuple[RuleHit, ...] = ()
    enforced: bool = False
    mode: str = "monitor"
    request_counter: ByteCounter | None = None
    response_counter: ByteCounter | None = None
    response_head_bytes: int = 0
    response_captured: tuple[tuple[str, str], ...] = ()
    timed_out: bool = False
    error_type: ErrorType | None = None
    error_message: str | None = None
    replied_status: int | None = None
    replied_bytes: int = 0
    done: bool = False


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
    if len(value) * 4 <= spec.max_field_bytes and value.isprintable():
        return value  # the common case, without a call
    value, cut = cap_text(value, spec.max_field_bytes)
    if cut:
        truncated.append(name)
    return value


def _capture(
    found: dict[bytes, bytes], prefix: str, spec: RecordSpec, truncated: list[str]
) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name.decode("ascii"), text(value, f"{prefix}.{name.decode('ascii')}", spec, truncated))
        for name, value in found.items()
    )


def start_flow(flow: http.HTTPFlow, trusted: TrustedProxies, spec: RecordSpec) -> FlowState:
    """Identify the client, capture what the record needs from the raw request headers, and
    rewrite the forwarding headers Puma will see, in one pass over the header fields.
    Called once per request, in requestheaders."""
    request = flow.request
    capture = spec.header_bytes
    kept: list[tuple[bytes, bytes]] = []
    forwarded_for: list[str] = []
    from_peer: dict[bytes, bytes] = {}
    found: dict[bytes, bytes] = {}
    agent = client_request_id = content_type = None
    names: list[bytes] = []
    host = b""
    hosts = 0
    has_length = chunked = False
    head = len(request.data.method) + len(request.data.path) + len(request.data.http_version) + 4
    for name, value in request.headers.fields:
        head += len(name) + len(value) + 4
        lname = name.lower()
        names.append(lname)
        if lname in capture:
            found[lname] = found[lname] + b", " + value if lname in found else value
        handling = _HANDLING.get(lname)
        if handling is None:  # most headers: forwarded unless a spoofing variant
            if b"_" in lname:
                norm = lname.replace(b"_", b"-")
                if norm in _UNDERSCORE_CHECKED or norm.startswith(_PROXYLOG_PREFIX):
                    continue
            elif lname.startswith(_PROXYLOG_PREFIX):
                continue
        elif handling <= _TRUSTED_ONLY:  # never forwarded as the client sent it
            if handling == _XFF:
                forwarded_for.append(value.decode("latin-1"))
            elif handling == _REQUEST_ID:
                client_request_id = value.decode("latin-1")
            elif handling == _TRUSTED_ONLY:
                from_peer.setdefault(lname, value)
            continue
        elif handling == _AGENT:
            agent = value
        elif handling == _HOST:
            host = value
            hosts += 1
        elif handling == _LENGTH:
            has_length = True
        elif handling == _CHUNKED:
            chunked = True
        else:
            content_type = value
        kept.append((name, value))

    if request.data.authority and request.http_version.startswith("HTTP/1"):
        # absolute-form: the authority wins over Host (RFC 9112 §3.2.2) and Puma gets origin-form
        host, hosts = request.data.authority, 1
        kept = [(b"Host", host), *(field for field in kept if field[0].lower() != b"host")]
        request.data.authority = b""
    identity = trusted.resolve(flow.client_conn.peername[0], forwarded_for)
    if not trusted.is_trusted(identity.peer):
        from_peer.clear()
    if client_request_id is None or not is_valid_request_id(client_request_id):
        client_request_id = new_request_id()
    forwarded_host = from_peer.get(b"x-forwarded-host") or host or request.data.authority
    kept.append((b"X-Forwarded-For", ", ".join(identity.chain).encode("ascii")))
    proto = from_peer.get(b"x-forwarded-proto") or _scheme(flow.client_conn.tls_established)
    kept.append((b"X-Forwarded-Proto", proto))
    if forwarded_host:
        kept.append((b"X-Forwarded-Host", forwarded_host))
    if port := from_peer.get(b"x-forwarded-port"):
        kept.append((b"X-Forwarded-Port", port))
    kept.append((b"X-Request-Id", client_request_id.encode("ascii")))
    request.headers.fields = tuple(kept)

    truncated: list[str] = []
    state = FlowState(
        request_id=client_request_id,
        identity=identity,
        request_head_bytes=head,
        captured=_capture(found, "http.request.headers", spec, truncated) if found else (),
        user_agent=None if agent is None else text(agent, "user_agent.original", spec, truncated),
        host=host or request.data.authority or request.data.host.encode("utf-8", "backslashreplace"),
        host_headers=hosts,
        chunked_upload=chunked and not has_length,
        content_type=content_type,
        header_names=tuple(names),
        truncated=truncated,
    )
    flow.metadata[META] = state
    return state


def _scheme(tls: bool) -> bytes:
    return b"https" if tls else b"http"


_BODYLESS_STATUS = frozenset({204, 304})


def start_response(flow: http.HTTPFlow, state: FlowState, spec: RecordSpec) -> bool:
    """Echo X-Request-Id on the response and capture its headers, in one pass. Returns True
    when the body should be streamed: no Content-Length (chunked or read-until-close, e.g.
    SSE and ActionController::Live), or mitmproxy already chose to stream a large body."""
    response = flow.response
    assert response is not None
    capture = spec.response_header_bytes
    kept: list[tuple[bytes, bytes]] = []
    found: dict[bytes, bytes] = {}
    has_length = False
    head = len(response.data.http_version) + len(response.data.reason) + 9
    for name, value in response.headers.fields:
        head += len(name) + len(value) + 4
        lname = name.lower()
        if lname in capture:
            found[lname] = found[lname] + b", " + value if lname in found else value
        if lname == b"x-request-id":
            continue
        if lname == b"content-length":
            has_length = True
        kept.append((name, value))
    kept.append((b"X-Request-Id", state.request_id.encode("ascii")))
    response.headers.fields = tuple(kept)
    state.response_head_bytes = head
    if found:
        state.response_captured = _capture(found, "http.response.headers", spec, state.truncated)
    if response.stream:
        return True
    has_body = (
        flow.request.method != "HEAD"
        and response.status_code >= 200
        and response.status_code not in _BODYLESS_STATUS
    )
    return has_body and not has_length


def _latin1(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _without_port(host: bytes) -> bytes:
    """``example.com:8080`` → ``example.com``; ``[::1]:8080`` → ``::1``."""
    if host.startswith(b"["):
        return host[1 : host.find(b"]")] if b"]" in host else host
    name, sep, port = host.rpartition(b":")
    return name if sep and port.isdigit() else host


def facts_from_flow(flow: http.HTTPFlow, state: FlowState, spec: RecordSpec) -> RequestFacts:
    """What the rule engine sees of this request (raw path and query, log-safe text)."""
    raw_path, sep, raw_query = flow.request.data.path.partition(b"?")
    scratch: list[str] = []  # truncation here is not the record's business
    return RequestFacts(
        ts=flow.request.timestamp_start,
        client_ip=state.identity.ip,
        method=text(flow.request.data.method, "", spec, scratch),
        path=text(raw_path, "", spec, scratch),
        query=text(raw_query, "", spec, scratch) if sep else None,
        user_agent=state.user_agent,
        header_names=frozenset(name.decode("latin-1") for name in state.header_names),
        host=text(_without_port(state.host), "", spec, scratch),
    )


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
    flow: http.HTTPFlow,
    state: FlowState,
    spec: RecordSpec,
    now: float | None = None,
    body_parser: BodyParser | None = None,
) -> AccessRecord:
    """The access record for a finished (or failed) flow; pure apart from reading the clock.
    With a `body_parser` (opt-in body capture), a buffered request body is parsed into
    ``request_body`` for the redactor to clean."""
    request = flow.request
    response = flow.response
    now = time.time() if now is None else now
    truncated = state.truncated
    raw_path, sep, raw_query = request.data.path.partition(b"?")
    path = text(raw_path, "url.path", spec, truncated)
    query = text(raw_query, "url.query", spec, truncated) if sep else None
    domain = text(_without_port(state.host), "url.domain", spec, truncated)

    content = request.raw_content if state.request_counter is None else None
    body_bytes = state.request_counter.bytes if state.request_counter is not None else len(content or b"")
    captured_body = None
    if body_parser is not None and content:
        captured_body = body_parser(_latin1(state.content_type), content)
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
        response_head = state.response_head_bytes
        response_headers = state.response_captured
        if request.timestamp_end and response.timestamp_start:
            upstream_ms = round((response.timestamp_start - request.timestamp_end) * 1000, 3)

    return AccessRecord(
        timestamp=request.timestamp_start,
        request_id=state.request_id,
        method=text(request.data.method, "http.request.method", spec, truncated),
        scheme=request.scheme or _scheme(flow.client_conn.tls_established).decode(),
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
        request_bytes=state.request_head_bytes + body_bytes,
        request_body_bytes=body_bytes,
        response_bytes=response_head + response_body if status is not None else 0,
        response_body_bytes=response_body if status is not None else 0,
        duration_ns=max(0, int((now - request.timestamp_start) * 1_000_000_000)),
        upstream_ms=upstream_ms,
        action=state.action,
        error_type=state.error_type,
        error_message=None
        if state.error_message is None
        else text(state.error_message, "error.message", spec, truncated),
        mode=state.mode,
        enforced=state.enforced,
        tags=state.tags,
        rules=state.hits,
        truncated=tuple(truncated),
        request_body=captured_body,
    )
