"""The header pass every data plane shares: who the client is, what the record captures, and
the forwarding headers Puma sees, in one walk over the request's fields; and the response's
X-Request-Id echo and capture."""

from __future__ import annotations

from proxylog.config import RecordSpec
from proxylog.identity import TrustedProxies, is_valid_request_id, new_request_id
from proxylog.pipeline.exchange import Exchange, Fields, RequestHead
from proxylog.pipeline.text import text, without_port

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
TAGS_HEADER = b"X-Proxylog-Tags"

# Not forwarded as the client sent them (RFC 9110 §7.6.1), nor any name the client's
# Connection header lists, except the PROTECTED ones. Expect is answered by the plane itself
# (100 Continue when it is about to forward the body), so Puma never sees it.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"expect"}
)
# Names a client's Connection header can never strip from what Puma receives: framing, and the
# forwarding fields the pipeline sets (``Connection: X-Forwarded-For`` must not delete the
# pipeline's rewritten value and let Puma see the proxy as the client).
PROTECTED_FROM_CONNECTION = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-proto",
        b"x-real-ip",
        b"x-request-id",
    }
)

# What the pass does with a header, by lowercased name, in one dict lookup: the first four
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


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """An absolute-form target → (authority, origin-form path); any other → (b"", target)."""
    if target[:1] == b"/" or b"://" not in target[:8]:
        return b"", target
    scheme, _, rest = target.partition(b"://")
    if scheme.lower() not in (b"http", b"https"):
        return b"", target
    slash = rest.find(b"/")
    query = rest.find(b"?")
    cut = min(i for i in (slash, query, len(rest)) if i >= 0)
    path = rest[cut:]
    return rest[:cut], path if path.startswith(b"/") else b"/" + path


def open_exchange[E: Exchange](
    head: RequestHead,
    trusted: TrustedProxies,
    spec: RecordSpec,
    factory: type[E] = Exchange,  # type: ignore[assignment]
) -> E:
    """Identify the client, capture what the record needs from the raw request headers, and
    build the header fields Puma will see, in one pass. Called once per request."""
    capture = spec.header_bytes
    kept: Fields = []
    forwarded_for: list[str] = []
    from_peer: dict[bytes, bytes] = {}
    found: dict[bytes, bytes] = {}
    agent = client_request_id = content_type = None
    names: list[bytes] = []
    host = b""
    hosts = 0
    has_length = chunked = False
    if head.authority:
        authority, path = head.authority, head.target
    elif head.method == b"CONNECT":  # authority-form: no path (refused, but recorded)
        authority, path = head.target, b""
    else:
        authority, path = split_target(head.target)
    # the request line (two spaces, CRLF) and the final CRLF; each field adds name: value CRLF
    size = head.head_bytes
    if not size:
        size = len(head.method) + len(head.target) + len(head.version) + 6
        size += sum(len(name) + len(value) + 4 for name, value in head.headers)
    handle, keep, note = _HANDLING.get, kept.append, names.append
    for name, value in head.headers:
        lname = name.lower()
        note(lname)
        if lname in capture:
            found[lname] = found[lname] + b", " + value if lname in found else value
        handling = handle(lname)
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
        keep((name, value))

    if authority and head.version.startswith(b"HTTP/1"):
        # absolute-form: the authority wins over Host (RFC 9112 §3.2.2) and Puma gets origin-form
        host = authority
        kept = [(b"Host", host), *(field for field in kept if field[0].lower() != b"host")]
        hosts = max(hosts, 1)
    elif not host:
        host = authority  # HTTP/2's :authority
    identity = trusted.resolve(head.peer[0], forwarded_for)
    if not trusted.is_trusted(identity.peer):
        from_peer.clear()
    if client_request_id is None or not is_valid_request_id(client_request_id):
        client_request_id = new_request_id()
    scheme = b"https" if head.tls else b"http"
    kept.append((b"X-Forwarded-For", ", ".join(identity.chain).encode("ascii")))
    kept.append((b"X-Forwarded-Proto", from_peer.get(b"x-forwarded-proto") or scheme))
    if forwarded_host := from_peer.get(b"x-forwarded-host") or host:
        kept.append((b"X-Forwarded-Host", forwarded_host))
    if port := from_peer.get(b"x-forwarded-port"):
        kept.append((b"X-Forwarded-Port", port))
    kept.append((b"X-Request-Id", client_request_id.encode("ascii")))

    truncated: list[str] = []
    user_agent = None if agent is None else text(agent, "user_agent.original", spec, truncated)
    captured = _capture(found, "http.request.headers", spec, truncated) if found else ()
    raw_path, sep, raw_query = path.partition(b"?")
    return factory(
        request_id=client_request_id,
        identity=identity,
        method=head.method,
        path=path,
        version=head.version,
        scheme=scheme.decode(),
        peer_port=head.peer[1],
        started=head.started,
        request_head_bytes=size,
        host=host,
        host_headers=hosts,
        chunked_upload=chunked and not has_length,
        content_type=content_type,
        user_agent=user_agent,
        captured=captured,
        header_names=tuple(names),
        upstream_headers=kept,
        method_text=text(head.method, "http.request.method", spec, truncated),
        domain_text=text(without_port(host), "url.domain", spec, truncated),
        path_text=text(raw_path, "url.path", spec, truncated),
        query_text=text(raw_query, "url.query", spec, truncated) if sep else None,
        truncated=truncated,
    )


def split_hop_by_hop(fields: Fields, keep: frozenset[bytes] = frozenset()) -> tuple[Fields, Fields]:
    """(what Puma may receive, the hop-by-hop fields removed): HOP_BY_HOP names other than
    `keep`, and the names the Connection header lists, other than PROTECTED_FROM_CONNECTION.
    A protocol upgrade (Upgrade with a Connection: upgrade token) keeps both fields."""
    tokens: set[bytes] = set()
    for name, value in fields:
        if name.lower() == b"connection":
            tokens.update(t.strip(b" \t").lower() for t in value.split(b","))
    if not tokens and not any(name.lower() in HOP_BY_HOP for name, _ in fields):
        return fields, []
    upgrade = b"upgrade" in tokens and any(name.lower() == b"upgrade" for name, _ in fields)
    drop = (HOP_BY_HOP | (tokens - PROTECTED_FROM_CONNECTION)) - keep
    if upgrade:
        drop -= {b"upgrade", b"connection"}
    kept: Fields = []
    removed: Fields = []
    for field in fields:
        (removed if field[0].lower() in drop else kept).append(field)
    return kept, removed


def add_tags(ex: Exchange, tags: tuple[str, ...]) -> None:
    """Tell Puma the request's tags, in X-Proxylog-Tags (a client's own was stripped)."""
    ex.tags = tags
    ex.upstream_headers.append((TAGS_HEADER, ",".join(tags).encode("ascii", "replace")))


def response_fields(
    ex: Exchange, fields: Fields | tuple[tuple[bytes, bytes], ...], spec: RecordSpec
) -> Fields:
    """The response header fields the client gets: Puma's, with X-Request-Id set to the
    request's; captures the headers the record keeps. (Each plane counts the head's size as
    it sends it, into `ex.response_head_bytes`.)"""
    capture = spec.response_header_bytes
    kept: Fields = []
    found: dict[bytes, bytes] = {}
    for name, value in fields:
        lname = name.lower()
        if lname in capture:
            found[lname] = found[lname] + b", " + value if lname in found else value
        if lname != b"x-request-id":
            kept.append((name, value))
    kept.append((b"X-Request-Id", ex.request_id.encode("ascii")))
    if found:
        ex.response_captured = _capture(found, "http.response.headers", spec, ex.truncated)
    return kept


def _capture(
    found: dict[bytes, bytes], prefix: str, spec: RecordSpec, truncated: list[str]
) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name.decode("ascii"), text(value, f"{prefix}.{name.decode('ascii')}", spec, truncated))
        for name, value in found.items()
    )
