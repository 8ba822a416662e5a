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

from proxylog.config import Config, ConfigError, TimeoutSpec, load_config
from proxylog.mitm import _connections
from proxylog.mitm.deadlines import Deadlines
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
from proxylog.mitm.layers import guard_http1, refuse_tls_on_plain_listener
from proxylog.mitm.replies import make_reply, reject, reply, reply_to_error
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


class ProxyLog:
    """One structured, redacted access record per request; forwarding headers for Puma."""

    def __init__(self, config: Config | None = None, *, runtime: Runtime | None = None) -> None:
        """`config` fixes the config (`proxylog serve`); otherwise the `proxylog_config` option
        names a file. `runtime` injects a ready Runtime (tests pass one with a MemorySink)."""
        self._preset = config or (runtime.config if runtime else None)
        self.runtime: Runtime | None = runtime
        # Requests between requestheaders and their record, by flow id.
        self._inflight: dict[str, http.HTTPFlow] = {}
        self._draining = False
        # Puma's response headers are due timeouts.upstream after the request ends.
        self._upstream_due: Deadlines[str, http.HTTPFlow] = Deadlines(lambda: self._timeouts().upstream)
        # A client's request headers are due timeouts.header after it connects or is answered.
        self._headers_due: Deadlines[str, Any] = Deadlines(lambda: self._timeouts().header)
        self._sweeper: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _timeouts(self) -> TimeoutSpec:
        return self.runtime.config.timeouts if self.runtime is not None else TimeoutSpec()

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
        try:
            self.abandon_inflight()
        finally:  # the queued records are flushed whatever happened to the in-flight ones
            if self.runtime is not None:
                await self.runtime.close(self.runtime.config.timeouts.drain)

    async def drain(self, timeout: float) -> bool:
        """Stop taking new work and wait until no request is in flight; False if `timeout` ran
        out first. Idle keep-alive connections are closed at once; a request that still
        arrives on an open connection is answered 503 with `Connection: close`."""
        self._draining = True
        for client in self._headers_due.pop_all():
            _connections.close_client(client, "proxylog: shutting down")
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def abandon_inflight(self) -> None:
        """Record every request still in flight as `shutdown` (called before the sinks close:
        mitmproxy would otherwise end these flows after proxylog stopped recording). Never
        raises: a flow whose record fails is logged and counted, and the others still recorded."""
        for flow in list(self._inflight.values()):
            self._abandon(flow)

    @guarded
    def _abandon(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is not None and not state.done:
            state.error_type = "shutdown"
            state.error_message = "proxylog stopped before the request finished"
            self._finish(flow, state)

    @guarded
    def next_layer(self, nextlayer: Any) -> None:
        if refuse_tls_on_plain_listener(nextlayer):
            peer = nextlayer.context.client.peername
            logger.warning("refused TLS from %s on a plain-HTTP listener", peer[0])
        elif self.runtime is not None:
            guard_http1(nextlayer, self.runtime.config.limits.header_bytes, self.refuse_head)

    def refuse_head(
        self, client: Any, server: Any, request: http.Request | None, status: int, why: str
    ) -> bytes:
        """Record a request head refused before it became a flow (too large, or unparseable),
        let the rules observe it with the status sent, and return proxylog's reply for it.
        Called by GuardedHttp1Server; never raises."""
        runtime = self.runtime
        if runtime is None:
            return make_reply(status, "", head_only=False)
        try:
            if request is None:  # method and path unknown: the record says so with empty strings
                request = http.Request(
                    "", 0, b"", b"", b"", b"", b"HTTP/1.1", http.Headers(), None, None, 0, None
                )
            request.timestamp_start = request.timestamp_start or time.time()
            if not request.scheme:
                request.scheme = "https" if client.tls_established else "http"
            flow = http.HTTPFlow(client, server)
            flow.request = request
            state = start_flow(flow, runtime.trusted, runtime.config.record)
            state.mode = runtime.mode
            if runtime.engine.enabled:  # smuggling probes count toward status rules
                state.facts = facts_from_flow(flow, state, runtime.config.record)
            state.error_type, state.error_message = "request_invalid", why
            answer = make_reply(status, state.request_id, request.method == "HEAD")
            state.replied_status, state.replied_bytes = status, len(answer)
            self._record(flow, state)
            return answer
        except Exception:
            runtime.internal_errors += 1
            logger.exception("internal error recording a refused request head")
            return make_reply(status, "", head_only=False)

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        runtime = self.runtime
        if runtime is None or state_of(flow) is not None:
            return
        self._headers_due.disarm(flow.client_conn.id)
        state = start_flow(flow, runtime.trusted, runtime.config.record)
        state.mode = runtime.mode
        self._inflight[flow.id] = flow
        self._drained.clear()
        if runtime.engine.enabled:
            state.facts = facts_from_flow(flow, state, runtime.config.record)
        if flow.error or flow.response:
            return
        if self._draining:
            reject(flow, state, 503, "shutdown", "proxylog is shutting down")
            return
        if state.host_headers > 1:
            reject(flow, state, 400, "request_invalid", "multiple Host headers")
            return
        if _over_body_limit(flow, runtime.config.limits.body_size):
            return  # mitmproxy refuses it next (413): no verdict, so no second reply
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
        reply(flow, state, verdict.status, retry_after=verdict.retry_after, body=verdict.body)
        return True

    @guarded
    def request(self, flow: http.HTTPFlow) -> None:
        if self.runtime is not None and state_of(flow) is not None and not (flow.response or flow.error):
            self._upstream_due.arm(flow.id, flow)

    @guarded
    def server_connect(self, data: Any) -> None:
        """Never open a connection to proxylog's own control or metrics port. In reverse mode
        only Puma is reachable anyway; in other modes (regular, transparent, …) the client
        names the destination, so any host on those ports is refused, with no DNS lookup that
        a hostile name could stall or rebind."""
        if self.runtime is None or data.server.address is None:
            return
        host, port = data.server.address[:2]
        if port in self.runtime.own_ports and (host, port) != self.runtime.upstream_address:
            data.server.error = f"proxylog does not connect to its own control or metrics port ({port})"

    @guarded
    def client_connected(self, client: Any) -> None:
        self._headers_due.arm(client.id, client)

    @guarded
    def client_disconnected(self, client: Any) -> None:
        self._headers_due.disarm(client.id)

    async def _sweep_deadlines(self) -> None:
        while True:
            await asyncio.sleep(TIMEOUT_SWEEP_S)
            for flow in self._upstream_due.expired():
                self._upstream_timeout(flow)
            for client in self._headers_due.expired():
                self._header_timeout(client)

    @guarded
    def _upstream_timeout(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.done or flow.response is not None or flow.error is not None:
            return
        state.timed_out = True
        if not _connections.abort_upstream(flow, "proxylog: upstream timeout"):
            logger.warning("upstream timeout but no upstream connection to abort")

    @guarded
    def _header_timeout(self, client: Any) -> None:
        if _connections.close_client(client, "proxylog: request headers too slow") and self.runtime:
            self.runtime.metrics.header_timeouts += 1
            logger.info("closed %s: no complete request headers in time", client.peername[0])

    @guarded
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or self.runtime is None:
            return
        self._upstream_due.disarm(flow.id)
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
        self._upstream_due.disarm(flow.id)
        if state.error_type is None and state.replied_status is None:
            # (when proxylog already answered, e.g. a block, this is just its own kill)
            reply_to_error(flow, state)
        self._finish(flow, state)

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
        self._upstream_due.disarm(flow.id)
        keep_alive = flow.request.http_version.startswith("HTTP/1") and not (
            flow.websocket or (flow.response is not None and flow.response.status_code == 101)
        )
        if keep_alive and flow.client_conn.connected and not self._draining:
            self._headers_due.arm(flow.client_conn.id, flow.client_conn)  # the next request
        try:
            self._record(flow, state)
        finally:
            self._inflight.pop(flow.id, None)
            if not self._inflight:
                self._drained.set()

    def _record(self, flow: http.HTTPFlow, state: FlowState) -> None:
        runtime = self.runtime
        if runtime is None:
            return
        if state.facts is not None and state.action != "blocked":
            self._observe(state, runtime.engine.observe(state.facts, status_sent(flow, state)))
        runtime.emit(record_from_flow(flow, state, runtime.config.record, body_parser=runtime.body_parser))


def _over_body_limit(flow: http.HTTPFlow, limit: int | None) -> bool:
    """True when the declared Content-Length exceeds `limits.body_size`."""
    if limit is None:
        return False
    length = flow.request.headers.get("content-length", "")
    return length.isdigit() and int(length) > limit
