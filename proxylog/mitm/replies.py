"""proxylog's own responses: upstream failures (502/504), blocks (403/429), rejects (400).

mitmproxy answers upstream failures with its own HTML page (naming mitmproxy and its
version), and a response set in `requestheaders` still waits for the whole request body. For
HTTP/1 clients proxylog therefore writes the complete response itself and kills the flow, so
mitmproxy just closes the connection. Other clients get a normal mitmproxy response. The
errors mitmproxy answers itself (invalid requests, body limits) reach HTTP/1 clients as
`error_reply`: proxylog's HTTP/1 server layer (layers.py) sends it instead of the page.
"""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.connection import ConnectionState

from proxylog.identity import is_valid_request_id
from proxylog.mitm import _connections
from proxylog.mitm.flows import FlowState
from proxylog.record import ErrorType

_REPLIES = {
    400: (b"Bad Request", b"400 Bad Request\n"),
    413: (b"Content Too Large", b"413 Content Too Large\n"),
    431: (b"Request Header Fields Too Large", b"431 Request Header Fields Too Large\n"),
    503: (b"Service Unavailable", b"503 Service Unavailable: shutting down.\n"),
    403: (b"Forbidden", b"403 Forbidden\n"),
    429: (b"Too Many Requests", b"429 Too Many Requests: slow down.\n"),
    502: (b"Bad Gateway", b"502 Bad Gateway: the application did not answer.\n"),
    504: (b"Gateway Timeout", b"504 Gateway Timeout: the application took too long.\n"),
}
# Upstream failures proxylog answers itself.
_REPLY_STATUS: dict[ErrorType, int] = {
    "upstream_connect": 502,
    "upstream_reset": 502,
    "upstream_timeout": 504,
}
# What mitmproxy itself sends for the errors proxylog leaves to it.
_MITMPROXY_STATUS: dict[ErrorType, int] = {
    "request_invalid": 400,
    "upstream_invalid": 502,
    **_REPLY_STATUS,
}


def classify_error(flow: http.HTTPFlow, state: FlowState) -> ErrorType:
    """What went wrong with a flow, from mitmproxy's error and the connections' states."""
    message = flow.error.msg if flow.error else ""
    if state.timed_out:
        return "upstream_timeout"
    if "body_size_limit" in message:
        return "body_too_large"
    if "from client, refusing" in message or message.startswith("Invalid request scheme"):
        return "request_invalid"
    if "from server, refusing" in message:
        return "upstream_invalid"
    if message == "Client disconnected." or not flow.client_conn.state & ConnectionState.CAN_READ:
        return "client_disconnect"
    if flow.request.timestamp_end is None and state.request_counter is None:
        # refused before Puma was due to be contacted (a buffered request is forwarded only
        # once complete; a streamed one has its counter): e.g. CONNECT, an invalid header
        return "request_invalid"
    if flow.server_conn.timestamp_tcp_setup is None:
        return "upstream_connect"
    return "upstream_reset"


def make_reply(
    status: int, request_id: str, head_only: bool, *, retry_after: int | None = None, body: str | None = None
) -> bytes:
    """A complete HTTP/1.1 response from proxylog itself that closes the connection (no
    X-Request-Id header when `request_id` is empty)."""
    reason, default_body = _REPLIES.get(status, (b"Error", b"%d\n" % status))
    content = default_body if body is None else body.encode("utf-8")
    extra = b"retry-after: %d\r\n" % retry_after if retry_after is not None else b""
    if request_id:
        extra = b"x-request-id: %s\r\n%s" % (request_id.encode("ascii"), extra)
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"%sconnection: close\r\n\r\n" % (status, reason, len(content), extra)
    )
    return head if head_only else head + content


def error_reply(request: http.Request | None, status: int) -> bytes:
    """What an HTTP/1 client gets instead of mitmproxy's error page for `status`: the request's
    X-Request-Id (set by start_flow; none when there is no valid one) and no body for HEAD.
    Sent by GuardedHttp1Server and measured for the record, so both see the same bytes."""
    request_id = request.headers.get("x-request-id", "") if request is not None else ""
    head_only = request is not None and request.method == "HEAD"
    return make_reply(status, request_id if is_valid_request_id(request_id) else "", head_only)


def write_reply(
    flow: http.HTTPFlow,
    state: FlowState,
    status: int,
    *,
    retry_after: int | None = None,
    body: str | None = None,
) -> bool:
    """Write a complete response straight to an HTTP/1 client and kill the flow, so mitmproxy
    closes the connection instead of sending its own page or waiting for an unread request
    body. False when the client is not HTTP/1 or already gone."""
    if not (flow.killable and _connections.can_write_raw(flow)):
        return False
    reply = make_reply(
        status, state.request_id, flow.request.method == "HEAD", retry_after=retry_after, body=body
    )
    if not _connections.write_to_client(flow, reply):
        return False
    flow.kill()
    state.replied_status = status
    state.replied_bytes = len(reply)
    return True


def reply(
    flow: http.HTTPFlow,
    state: FlowState,
    status: int,
    *,
    retry_after: int | None = None,
    body: str | None = None,
) -> None:
    """Answer the request now (from requestheaders): written whole for HTTP/1, else a normal
    mitmproxy response (which, for HTTP/2, still waits for the request body)."""
    if write_reply(flow, state, status, retry_after=retry_after, body=body):
        return
    content = body.encode() if body is not None else _REPLIES[status][1]
    headers = {"X-Request-Id": state.request_id, "Content-Type": "text/plain; charset=utf-8"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    state.replied_status = status
    state.replied_bytes = len(content)
    flow.response = http.Response.make(status, content, headers)


def reject(flow: http.HTTPFlow, state: FlowState, status: int, error_type: ErrorType, why: str) -> None:
    """Refuse a malformed request before Puma sees it or its body is read."""
    state.error_type = error_type
    state.error_message = why
    reply(flow, state, status)


def reply_to_error(flow: http.HTTPFlow, state: FlowState) -> None:
    """Classify a failed flow and answer it: proxylog's own 502/504 for an upstream failure
    when the client is HTTP/1 and has no response headers yet; otherwise note the status
    mitmproxy sends (or none: the client is gone, or headers were already streamed)."""
    state.error_type = error_type = classify_error(flow, state)
    state.error_message = flow.error.msg if flow.error else None
    headers_sent = flow.response is not None and bool(flow.response.stream)
    if headers_sent or error_type == "client_disconnect":
        return
    status = _REPLY_STATUS.get(error_type)
    if status is not None and write_reply(flow, state, status):
        return
    if error_type == "body_too_large":
        status = 502 if flow.response is not None else 413
    else:
        status = _MITMPROXY_STATUS.get(error_type)
    state.replied_status = status
    if status is not None and flow.request.http_version.startswith("HTTP/1"):
        # what GuardedHttp1Server sends in place of mitmproxy's page
        state.replied_bytes = len(error_reply(flow.request, status))
