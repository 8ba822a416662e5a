"""Where proxylog reaches below mitmproxy's addon API to a connection, kept together.

mitmproxy has no hook to answer a request with a status of our choosing once the upstream
failed (it sends its own 502 page), none to bound the wait for upstream response headers,
none to close or reset a client connection (timeouts, a ban), and a response set in
`requestheaders` still waits for the whole request body. These helpers use the proxyserver
addon's live connection table, the same one its `inject.*` commands use.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy.mode_servers import ProxyConnectionHandler

from proxylog.net import reset_on_close

logger = logging.getLogger("proxylog")


def _handler(flow: http.HTTPFlow) -> ProxyConnectionHandler | None:
    proxyserver = ctx.master.addons.get("proxyserver")
    if proxyserver is None:
        return None
    return proxyserver.connections.get(flow.client_conn.id)


def can_write_raw(flow: http.HTTPFlow) -> bool:
    """True when the client speaks HTTP/1 and proxylog may write a whole response itself."""
    return flow.request.http_version.startswith("HTTP/1") and _handler(flow) is not None


def write_to_client(flow: http.HTTPFlow, data: bytes) -> bool:
    """Queue raw bytes on the client connection (HTTP/1 only); False if it is gone."""
    handler = _handler(flow)
    if handler is None or not flow.client_conn.state & ConnectionState.CAN_WRITE:
        return False  # gone, or half-closed by proxylog after its own reply (no write after EOF)
    io = handler.transports.get(flow.client_conn)
    if io is None or io.writer is None or io.writer.is_closing():
        return False
    io.writer.write(data)
    return True


def abort_upstream(flow: http.HTTPFlow, reason: str) -> bool:
    """Close this client connection's upstream connection(s), pending connects included.

    mitmproxy then fires the flow's `error` hook, where proxylog answers the client.
    In reverse mode an HTTP/1 client has at most one upstream connection at a time.
    """
    handler = _handler(flow)
    if handler is None:
        return False
    aborted = False
    for conn, io in list(handler.transports.items()):
        if conn is not handler.client and io.handler is not None:
            io.handler.cancel(reason)
            aborted = True
    return aborted


def close_client(client: Any, reason: str) -> bool:
    """Close a client connection (no request in progress on it); False if it is gone."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client.id) if proxyserver is not None else None
    io = handler.transports.get(client) if handler is not None else None
    if io is None or io.handler is None:
        return False
    io.handler.cancel(reason)
    return True


def client_transport(client: Any) -> Any | None:
    """The asyncio transport of a client connection, None if it is gone."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client.id) if proxyserver is not None else None
    io = handler.transports.get(client) if handler is not None else None
    if io is None or io.writer is None:
        return None
    return getattr(io.writer, "transport", None)


def abort_client(client: Any, reason: str) -> bool:
    """Drop a client connection now, discarding what it was not yet sent (a close would wait
    for a client that reads nothing); False if it is gone."""
    transport = client_transport(client)
    if transport is not None:
        reset_on_close(transport)
        transport.abort()
    return close_client(client, reason)
