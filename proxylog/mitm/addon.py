"""The ProxyLog addon: thin hooks that translate flows and delegate to the Runtime.

Every hook is guarded: mitmproxy logs and swallows addon exceptions, which would make a
crash fail open by accident. Here a crash is logged, counted and the request proceeds
(fail-open on purpose: a proxylog bug must not take traffic down), still with its record.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.connection import ConnectionState

from proxylog.config import Config, ConfigError, load_config
from proxylog.mitm import _connections
from proxylog.mitm.flows import (
    ByteCounter,
    FlowState,
    facts_from_flow,
    record_from_flow,
    start_flow,
    start_response,
    state_of,
    status_sent,
)
from proxylog.mitm.layers import refuse_tls_on_plain_listener
from proxylog.record import ErrorType
from proxylog.rules import Verdict
from proxylog.runtime import Runtime

logger = logging.getLogger("proxylog")

# mitmproxy defaults that break a front proxy (DESIGN §7); applied under `mitmdump -s` when
# the user left them at mitmproxy's default.
FRONT_PROXY_OPTIONS: dict[str, Any] = {
    "connection_strategy": "lazy",
    "keep_host_header": True,
    "validate_inbound_headers": True,
    "block_global": False,
}

TIMEOUT_SWEEP_S = 0.1

_REPLIES = {
    400: (b"Bad Request", b"400 Bad Request\n"),
    403: (b"Forbidden", b"403 Forbidden\n"),
    429: (b"Too Many Requests", b"429 Too Many Requests: slow down.\n"),
    502: (b"Bad Gateway", b"502 Bad Gateway: the application did not answer.\n"),
    504: (b"Gateway Timeout", b"504 Gateway Timeout: the application took too long.\n"),
}
_REPLY_STATUS: dict[ErrorType, int] = {
    "upstream_connect": 502,
    "upstream_reset": 502,
    "upstream_timeout": 504,
}
# Statuses mitmproxy itself sends for errors proxylog leaves to it.
_MITMPROXY_STATUS: dict[ErrorType, int] = {
    "request_invalid": 400,
    "upstream_invalid": 502,
    **_REPLY_STATUS,
}


def guarded[**P](hook: Callable[P, None]) -> Callable[P, None]:
    """Run a hook, logging (never propagating) any exception it raises."""

    @functools.wraps(hook)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            hook(*args, **kwargs)
        except Exception:
            addon = args[0]
            if isinstance(addon, ProxyLog) and addon.runtime is not None:
                addon.runtime.internal_errors += 1
            logger.exception("internal error in %s hook", hook.__name__)

    return wrapper


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
    if flow.server_conn.timestamp_tcp_setup is None:
        return "upstream_connect"
    return "upstream_reset"


def make_reply(
    status: int,
    request_id: str,
    head_only: bool,
    *,
    retry_after: int | None = None,
    body: str | None = None,
) -> bytes:
    """A complete HTTP/1.1 response from proxylog itself that closes the connection."""
    reason, default_body = _REPLIES.get(status, (b"Error", b"%d\n" % status))
    content = default_body if body is None else body.encode("utf-8")
    extra = b"retry-after: %d\r\n" % retry_after if retry_after is not None else b""
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"x-request-id: %s\r\n%sconnection: close\r\n\r\n"
        % (status, reason, len(content), request_id.encode("ascii"), extra)
    )
    return head if head_only else head + content


class ProxyLog:
    """One structured, redacted access record per request; forwarding headers for Puma."""

    def __init__(self, config: Config | None = None, *, runtime: Runtime | None = None) -> None:
        """`config` fixes the config (`proxylog serve`); otherwise the `proxylog_config` option
        names a file. `runtime` injects a ready Runtime (tests pass one with a MemorySink)."""
        self._preset = config or (runtime.config if runtime else None)
        self.runtime: Runtime | None = runtime
        self.inflight = 0
        self._deadlines: dict[str, tuple[float, http.HTTPFlow]] = {}
        self._header_deadlines: dict[str, tuple[float, Any]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    def load(self, loader: Any) -> None:
        loader.add_option(
            "proxylog_config",
            str,
            "",
            "Path to the proxylog YAML config (empty: built-in defaults, records on stdout).",
        )

    def configure(self, updated: set[str]) -> None:
        if self.runtime is not None and (self._preset or "proxylog_config" not in updated):
            return
        try:
            config = self._preset or (
                load_config(ctx.options.proxylog_config) if ctx.options.proxylog_config else Config()
            )
        except ConfigError as e:
            raise exceptions.OptionsError(f"proxylog_config: {e}") from e
        old, self.runtime = self.runtime, Runtime(config)
        if old is not None:
            asyncio.get_running_loop().create_task(old.close(config.timeouts.drain))
            self.runtime.start()

    def running(self) -> None:
        if self.runtime is None:
            return
        wanted = {
            **FRONT_PROXY_OPTIONS,
            "stream_large_bodies": str(self.runtime.config.limits.stream_threshold),
        }
        for name, value in wanted.items():
            if name in ctx.options and ctx.options.default(name) == getattr(ctx.options, name) != value:
                logger.warning("setting %s=%s for a front proxy", name, value)
                ctx.options.update(**{name: value})
        self.runtime.start()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_deadlines())

    async def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.runtime is not None:
            await self.runtime.close(self.runtime.config.timeouts.drain)

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` ran out first."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @guarded
    def next_layer(self, nextlayer: Any) -> None:
        if refuse_tls_on_plain_listener(nextlayer):
            peer = nextlayer.context.client.peername
            logger.warning("refused TLS from %s on a plain-HTTP listener", peer[0])

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        runtime = self.runtime
        if runtime is None or state_of(flow) is not None:
            return
        self._header_deadlines.pop(flow.client_conn.id, None)
        state = start_flow(flow, runtime.trusted, runtime.config.record)
        state.mode = runtime.mode
        self.inflight += 1
        self._drained.clear()
        if runtime.engine.enabled:
            state.facts = facts_from_flow(flow, state, runtime.config.record)
        if flow.error or flow.response:
            return
        if state.host_headers > 1:
            self._reject(flow, state, 400, "request_invalid", "multiple Host headers")
            return
        if state.facts is not None and self._apply(flow, state, runtime.engine.check(state.facts)):
            return
        if flow.request.stream or state.chunked_upload:
            # Large or chunked uploads go straight to Puma, counted, never stored.
            state.request_counter = flow.request.stream = ByteCounter()

    def _apply(self, flow: http.HTTPFlow, state: FlowState, verdict: Verdict) -> bool:
        """Note the engine's request-time verdict on the flow, tell Puma the tags, and block
        when enforcement applies (the mode, or the rule's own override). True if blocked."""
        if verdict.tags:
            state.tags = verdict.tags
            tags = ",".join(verdict.tags).encode("ascii", "replace")
            flow.request.headers.fields += ((b"X-Proxylog-Tags", tags),)
        state.hits = verdict.rules
        if not verdict.block:
            return False
        state.enforced = verdict.enforce if verdict.enforce is not None else state.mode == "enforce"
        if not state.enforced:
            state.action = "would_block"
            return False
        state.action = "blocked"
        self._reply(flow, state, verdict.status, retry_after=verdict.retry_after, body=verdict.body)
        return True

    @guarded
    def request(self, flow: http.HTTPFlow) -> None:
        if self.runtime is None or state_of(flow) is None or flow.response or flow.error:
            return
        # Deadlines are request end + one constant, so insertion order is deadline order and
        # the sweeper only ever looks at the oldest entries.
        self._deadlines[flow.id] = (time.monotonic() + self.runtime.config.timeouts.upstream, flow)

    async def _sweep_deadlines(self) -> None:
        while True:
            await asyncio.sleep(TIMEOUT_SWEEP_S)
            now = time.monotonic()
            while self._deadlines:
                flow_id, (deadline, flow) = next(iter(self._deadlines.items()))
                if deadline > now:
                    break
                del self._deadlines[flow_id]
                self._upstream_timeout(flow)
            while self._header_deadlines:
                client_id, (deadline, client) = next(iter(self._header_deadlines.items()))
                if deadline > now:
                    break
                del self._header_deadlines[client_id]
                self._header_timeout(client)

    def _await_headers(self, client: Any) -> None:
        """Arm the header deadline: the client must send complete request headers in time.
        (Popped first so the entry moves to the end: dict order stays deadline order.)"""
        timeout = self.runtime.config.timeouts.header if self.runtime is not None else 0
        self._header_deadlines.pop(client.id, None)
        if timeout > 0:
            self._header_deadlines[client.id] = (time.monotonic() + timeout, client)

    @guarded
    def _header_timeout(self, client: Any) -> None:
        if _connections.close_client(client, "proxylog: request headers too slow") and self.runtime:
            self.runtime.metrics.header_timeouts += 1
            logger.info("closed %s: no complete request headers in time", client.peername[0])

    @guarded
    def client_connected(self, client: Any) -> None:
        self._await_headers(client)

    @guarded
    def client_disconnected(self, client: Any) -> None:
        self._header_deadlines.pop(client.id, None)

    @guarded
    def _upstream_timeout(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.done or flow.response is not None or flow.error is not None:
            return
        state.timed_out = True
        if not _connections.abort_upstream(flow, "proxylog: upstream timeout"):
            logger.warning("upstream timeout but no upstream connection to abort")

    @guarded
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or self.runtime is None:
            return
        self._deadlines.pop(flow.id, None)
        if start_response(flow, state, self.runtime.config.record):
            # Streamed as it arrives and counted; mitmproxy would otherwise buffer it whole.
            state.response_counter = flow.response.stream = ByteCounter()  # type: ignore[union-attr]

    @guarded
    def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is not None:
            self._finish(flow, state)

    @guarded
    def error(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.done:
            return
        self._deadlines.pop(flow.id, None)
        if state.error_type is None and state.replied_status is None:
            # (when proxylog already answered, e.g. a block, this is just its own kill)
            state.error_type = classify_error(flow, state)
            state.error_message = flow.error.msg if flow.error else None
            self._reply_to_error(flow, state)
        self._finish(flow, state)

    def _reply_to_error(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Answer an upstream failure with proxylog's own 502/504 when the client is HTTP/1
        and has not yet received response headers; otherwise note what mitmproxy sends."""
        error_type = state.error_type
        assert error_type is not None
        headers_sent = flow.response is not None and bool(flow.response.stream)
        if headers_sent or error_type == "client_disconnect":
            return
        status = _REPLY_STATUS.get(error_type)
        if status is not None and self._write_reply(flow, state, status):
            return
        if error_type == "body_too_large":
            state.replied_status = 502 if flow.response is not None else 413
        else:
            state.replied_status = _MITMPROXY_STATUS.get(error_type)

    def _reject(
        self, flow: http.HTTPFlow, state: FlowState, status: int, error_type: ErrorType, why: str
    ) -> None:
        """Answer now, from requestheaders: the body is never read and Puma never sees it."""
        state.error_type = error_type
        state.error_message = why
        self._reply(flow, state, status)

    def _reply(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        status: int,
        *,
        retry_after: int | None = None,
        body: str | None = None,
    ) -> None:
        """Send proxylog's own response: written whole for HTTP/1 (see _write_reply), else a
        normal mitmproxy response (which, for HTTP/2, waits for the request body)."""
        if self._write_reply(flow, state, status, retry_after=retry_after, body=body):
            return
        content = body.encode() if body is not None else _REPLIES[status][1]
        headers = {"X-Request-Id": state.request_id, "Content-Type": "text/plain; charset=utf-8"}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        state.replied_status = status
        state.replied_bytes = len(content)
        flow.response = http.Response.make(status, content, headers)

    @staticmethod
    def _write_reply(
        flow: http.HTTPFlow,
        state: FlowState,
        status: int,
        *,
        retry_after: int | None = None,
        body: str | None = None,
    ) -> bool:
        """Write a complete response straight to an HTTP/1 client and kill the flow, so that
        mitmproxy closes the connection instead of sending its own page or waiting for an
        unread request body. False when the client is not HTTP/1 or already gone."""
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

    @staticmethod
    def _observe(state: FlowState, verdict: Verdict) -> None:
        """Fold what the response told the engine into the record (tags and rule counts)."""
        if verdict.tags:
            state.tags = tuple(dict.fromkeys((*state.tags, *verdict.tags)))
        if verdict.rules:
            state.hits = (*state.hits, *verdict.rules)

    def _finish(self, flow: http.HTTPFlow, state: FlowState) -> None:
        if state.done or self.runtime is None:
            return
        state.done = True
        self._deadlines.pop(flow.id, None)
        keep_alive = flow.request.http_version.startswith("HTTP/1") and not (
            flow.websocket or (flow.response is not None and flow.response.status_code == 101)
        )
        if keep_alive and flow.client_conn.connected:
            self._await_headers(flow.client_conn)  # the next request on this connection
        runtime = self.runtime
        try:
            if state.facts is not None and state.action != "blocked":
                self._observe(state, runtime.engine.observe(state.facts, status_sent(flow, state)))
            runtime.emit(
                record_from_flow(flow, state, runtime.config.record, body_parser=runtime.body_parser)
            )
        finally:
            self.inflight -= 1
            if self.inflight <= 0:
                self.inflight = 0
                self._drained.set()
