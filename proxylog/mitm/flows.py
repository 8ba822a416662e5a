"""Translation between mitmproxy flows and the pipeline's values: a flow's head in, the
rewritten headers back onto the flow, and the flow's outcome into its exchange."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from mitmproxy import http

from proxylog.config import RecordSpec
from proxylog.pipeline import Exchange, Pipeline, RequestHead
from proxylog.pipeline.headers import split_hop_by_hop
from proxylog.pipeline.records import record_for
from proxylog.record import AccessRecord
from proxylog.redact.bodies import BodyParser

META = "proxylog"

# Each request head's size as received (OWS, empty values and all), set by GuardedHttp1Server
# for the record's byte count; a request it did not read is sized from its fields.
HEAD_SIZES: weakref.WeakKeyDictionary[http.Request, int] = weakref.WeakKeyDictionary()
# The payload bytes of a request body cut off before its end (too slow), which mitmproxy
# does not keep: set by GuardedHttp1Server for the record's byte count.
BODY_ARRIVED: weakref.WeakKeyDictionary[http.Request, int] = weakref.WeakKeyDictionary()


class ByteCounter:
    """A `stream` callable that counts body bytes as they pass, storing nothing."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0

    def __call__(self, chunk: bytes) -> bytes:
        self.bytes += len(chunk)
        return chunk


@dataclass(slots=True)
class FlowState(Exchange):
    """A flow's exchange, under ``flow.metadata["proxylog"]``, with what only this plane
    needs: the streaming counters and whether proxylog's upstream deadline fired."""

    request_counter: ByteCounter | None = None
    response_counter: ByteCounter | None = None
    timed_out: bool = False
    # What start_flow took off the request for Puma and `restore_client_view` puts back.
    client_hop: tuple[tuple[bytes, bytes], ...] = ()
    client_version: str | None = None


def state_of(flow: http.HTTPFlow) -> FlowState | None:
    return flow.metadata.get(META)


def head_of(flow: http.HTTPFlow) -> RequestHead:
    """The flow's request as the pipeline takes it."""
    request = flow.request
    data = request.data
    fields = list(request.headers.fields)
    size = HEAD_SIZES.get(request)
    if size is None:  # from its fields: an absolute-form target counts scheme and authority too
        target = len(data.path) + (len(data.scheme) + 3 + len(data.authority) if data.authority else 0)
        size = len(data.method) + target + len(data.http_version) + 6
        size += sum(len(name) + len(value) + 4 for name, value in fields)
    return RequestHead(
        method=data.method,
        target=data.path,
        version=data.http_version,
        headers=fields,
        peer=flow.client_conn.peername[:2],
        tls=flow.client_conn.tls_established,
        started=request.timestamp_start,
        head_bytes=size,
        authority=data.authority,
    )


# mitmproxy answers Expect: 100-continue itself, after requestheaders: leave it to it.
_MITMPROXY_HANDLES = frozenset({b"expect"})


def start_flow(flow: http.HTTPFlow, pipeline: Pipeline) -> FlowState:
    """Begin the flow's exchange and give the flow what Puma is to see: the pipeline's header
    fields without hop-by-hop ones, origin-form for an absolute-form HTTP/1 request, and
    HTTP/1.1, as the fast plane sends. mitmproxy reads the same request object to decide the
    client connection's fate after the response, so `restore_client_view` puts the client's
    hop-by-hop fields and version back once the request has gone. Called once per request,
    in requestheaders."""
    state = pipeline.begin(head_of(flow), FlowState)
    request = flow.request
    kept, removed = split_hop_by_hop(state.upstream_headers, _MITMPROXY_HANDLES)
    state.upstream_headers[:] = kept
    state.client_hop = tuple(removed)
    request.headers.fields = tuple(kept)
    if request.http_version == "HTTP/1.0":
        state.client_version, request.http_version = "HTTP/1.0", "HTTP/1.1"
    if request.data.authority and request.http_version.startswith("HTTP/1"):
        request.data.authority = b""
    flow.metadata[META] = state
    return state


def restore_client_view(flow: http.HTTPFlow, state: FlowState) -> None:
    """Once the request has gone to Puma: the client's own version and hop-by-hop fields back
    on the request, for mitmproxy's keep-alive decision (Connection: close, HTTP/1.0)."""
    if state.client_version is not None:
        flow.request.http_version, state.client_version = state.client_version, None
    if state.client_hop:
        flow.request.headers.fields += state.client_hop
        state.client_hop = ()


_BODYLESS_STATUS = frozenset({204, 304})
# A response body larger than this is streamed, whatever `limits.stream_threshold` says:
# buffered whole, one a client leaves unread would sit in memory twice (the flow's copy and
# the socket's write buffer) until `timeouts.write`; streamed, the client's flow control holds
# back the read from Puma, so no more than about this much waits per connection.
BUFFERED_RESPONSE_MAX = 64 * 1024


def start_response(flow: http.HTTPFlow, state: FlowState, pipeline: Pipeline) -> bool:
    """Echo X-Request-Id on the response and capture its headers. Returns True when the body
    should be streamed: no Content-Length (chunked or read-until-close, e.g. SSE and
    ActionController::Live), one over BUFFERED_RESPONSE_MAX, or mitmproxy already chose to
    stream a large body."""
    response = flow.response
    assert response is not None
    original = response.headers.fields
    head = len(response.data.http_version) + len(response.data.reason) + 9  # status line, final CRLF
    state.response_head_bytes = head + sum(len(name) + len(value) + 4 for name, value in original)
    fields = pipeline.response_fields(state, original)
    response.headers.fields = tuple(fields)
    if response.stream:
        return True
    has_body = (
        flow.request.method != "HEAD"
        and response.status_code >= 200
        and response.status_code not in _BODYLESS_STATUS
    )
    if not has_body:
        return False
    length = next((value for name, value in fields if name.lower() == b"content-length"), None)
    return length is None or not length.isdigit() or int(length) > BUFFERED_RESPONSE_MAX


def settle(flow: http.HTTPFlow, state: FlowState) -> None:
    """Copy what became of the flow into its exchange: the status the client received (its
    own reply, or Puma's once streamed or fully received), bytes and upstream timings."""
    request, response = flow.request, flow.response
    if state.upgraded:  # settled at the 101; the tunnel's bytes are counted as they pass
        return
    if state.request_counter is not None:
        state.request_body_bytes = state.request_counter.bytes
    elif request in BODY_ARRIVED:
        state.request_body_bytes = BODY_ARRIVED[request]
    else:
        state.request_content = request.raw_content
        state.request_body_bytes = len(request.raw_content or b"")
    state.request_ended = request.timestamp_end
    if state.replied or response is None:
        return
    state.response_started = response.timestamp_start
    if flow.error is None or response.stream:
        state.status = response.status_code
        state.response_body_bytes = (
            state.response_counter.bytes
            if state.response_counter is not None
            else len(response.raw_content or b"")
        )


def record_from_flow(
    flow: http.HTTPFlow,
    state: FlowState,
    spec: RecordSpec,
    now: float | None = None,
    body_parser: BodyParser | None = None,
) -> AccessRecord:
    """The access record for a finished (or failed) flow: `settle`, then the pipeline's one
    record builder (what `Pipeline.finish` emits, before rule observation)."""
    settle(flow, state)
    return record_for(state, spec, now, body_parser)
