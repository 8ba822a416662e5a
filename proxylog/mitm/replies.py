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

from proxylog.http1 import REPLIES, make_reply
from proxylog.identity import is_valid_request_id
from proxylog.mitm import connections
from proxylog.mitm.flows import FlowState
from proxylog.record import ErrorType

# How the errors of requests GuardedHttp1Server cut off itself begin (it has already sent the
# 400 and half-closed the connection): the rest is the reason for the record.
REFUSED = "proxylog refused: "
# ... and of those it cut off because the client was too slow (a request body below its rate).
TIMED_OUT = "proxylog timed out: "
# Upstream failures proxylog answers itself.
_REPLY_STATUS: dict[ErrorType, int] = {
    "upstream_connect": 502,
    "upstream_reset": 502,
    "upstream_timeout": 504,
}
# What mitmproxy itself sends for the errors proxylog leaves to it.
_MITMPROXY_STATUS: dict[ErrorType, int] = {
    "request_invalid": 400,
    "client_timeout": 408,
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
    if message.startswith(TIMED_OUT):
        return "client_timeout"
    if (
        "from client, refusing" in message
        or message.startswith("Invalid request scheme")
        or message.startswith(REFUSED)
    ):
        return "request_invalid"
    if "from server, refusing" in message or message.startswith("Cannot parse HTTP response"):
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


def invalid_response_head(response: http.Response) -> str | None:
    """Why a response head mitmproxy parsed is not one an HTTP/1.1 origin may send (the fast
    plane's parser refuses these), or None."""
    if response.http_version not in ("HTTP/1.0", "HTTP/1.1"):
        return f"invalid response head: version {response.http_version[:16]}"
    if not 100 <= response.status_code <= 999:
        return f"invalid response head: status {response.status_code}"
    return None


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
    if not (flow.killable and connections.can_write_raw(flow)):
        return False
    reply = make_reply(
        status, state.request_id, flow.request.method == "HEAD", retry_after=retry_after, body=body
    )
    if not connections.write_to_client(flow, reply):
        return False
    flow.kill()
    state.answered(status, reply)
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
    content = body.encode() if body is not None else REPLIES[status][1]
    headers = {"X-Request-Id": state.request_id, "Content-Type": "text/plain; charset=utf-8"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    state.answered(status, b"", body=len(content))
    flow.response = http.Response.make(status, content, headers)


def reject(flow: http.HTTPFlow, state: FlowState, status: int, error_type: ErrorType, why: str) -> None:
    """Refuse a malformed request before Puma sees it or its body is read, or a malformed
    response before the client sees any of it."""
    state.error_type = error_type
    state.error_message = why
    reply(flow, state, status)


def reply_to_error(flow: http.HTTPFlow, state: FlowState) -> None:
    """Classify a failed flow and answer it: proxylog's own 502/504 for an upstream failure
    when the client is HTTP/1 and has no response headers yet; otherwise note the status
    mitmproxy sends (or none: the client is gone, or headers were already streamed)."""
    state.error_type = error_type = classify_error(flow, state)
    state.error_message = flow.error.msg.removeprefix(REFUSED).removeprefix(TIMED_OUT) if flow.error else None
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
    if status is not None:
        # on HTTP/1, what GuardedHttp1Server sends in place of mitmproxy's page
        http1 = flow.request.http_version.startswith("HTTP/1")
        state.answered(status, error_reply(flow.request, status) if http1 else b"")
