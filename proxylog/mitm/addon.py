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
from proxylog.deadlines import Deadlines
from proxylog.http1 import lenient_head, make_reply
from proxylog.mitm import connections
from proxylog.mitm.flows import (
    ByteCounter,
    FlowState,
    restore_client_view,
    settle,
    start_flow,
    start_response,
    state_of,
)
from proxylog.mitm.layers import guard_http1, refuse_tls_on_plain_listener
from proxylog.mitm.replies import invalid_response_head, reject, reply, reply_to_error
from proxylog.mitm.slow import ClientGuard
from proxylog.pipeline import Block, Exchange, Pipeline, RequestHead
from proxylog.record import ErrorType
from proxylog.runtime import Runtime

logger = logging.getLogger("proxylog")

# mitmproxy defaults that break a front proxy (eager upstream connections, a rewritten Host,
# unvalidated inbound headers, refusing non-local upstreams); applied under `mitmdump -s` when
# the user left them at mitmproxy's default.
FRONT_PROXY_OPTIONS: dict[str, Any] = {
    "connection_strategy": "lazy",
    "keep_host_header": True,
    "validate_inbound_headers": True,
    # an upgraded connection (WebSocket) is a byte tunnel, counted both ways, not decoded
    "websocket": False,
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
        # Requests between requestheaders and their record, by flow id.
        self._inflight: dict[str, http.HTTPFlow] = {}
        # Upgraded requests whose tunnel is open, by client connection id.
        self._tunnels: dict[str, http.HTTPFlow] = {}
        # Client connections no request has been read from yet, by id.
        self._unread: set[str] = set()
        self._draining = False
        # Puma's response headers are due timeouts.upstream after the request ends; a client's
        # request headers timeouts.header after it connects or is answered. Retuned on reload.
        self._upstream_due: Deadlines[http.HTTPFlow] = Deadlines(TimeoutSpec().upstream)
        self._headers_due: Deadlines[Any] = Deadlines(TimeoutSpec().header)
        # Per-client connection counts, unread responses (timeouts.write), banned clients.
        self._guard = ClientGuard(TimeoutSpec().write)
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # owned: awaited in done()
        self._drained = asyncio.Event()
        self._drained.set()
        self._runtime: Runtime | None = None
        self.pipeline: Pipeline
        self.runtime = runtime

    @property
    def runtime(self) -> Runtime | None:
        return self._runtime

    @runtime.setter
    def runtime(self, runtime: Runtime | None) -> None:
        self._runtime = runtime
        if runtime is not None:
            self.pipeline = Pipeline(runtime)
            runtime.hooks.apply.append(self._retune)
            runtime.hooks.banned.append(self._banned)
            self._retune(runtime.config)

    def _retune(self, config: Config) -> None:
        """A (re)loaded config's timeouts, for deadlines armed from now on."""
        self._upstream_due.retune(config.timeouts.upstream)
        self._headers_due.retune(config.timeouts.header)
        self._guard.write_due.retune(config.timeouts.write)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

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
        if self.runtime is None:
            self.runtime = Runtime(config)
            return
        # a new file for a running proxy: the one reload path, keeping bans, counters and mode
        task = asyncio.get_running_loop().create_task(self._reload(ctx.options.proxylog_config))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self, path: str) -> None:
        if self.runtime is not None:
            result = await self.runtime.reload("proxylog_config option", source=path)
            if not result.ok:
                logger.error("proxylog_config %s not applied: %s", path, result.error)

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
        tasks = [*self._tasks, *([self._sweeper] if self._sweeper is not None else [])]
        self._sweeper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
        for client in self._headers_due.clear():
            connections.close_client(client, "proxylog: shutting down")
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
            config = self.runtime.config
            pace = (config.timeouts.body_rate, config.timeouts.body_window)
            guard_http1(nextlayer, config.limits.header_bytes, self.refuse_head, pace, config.timeouts.write)

    def refuse_head(
        self, client: Any, raw: bytes, status: int, why: str, error: ErrorType = "request_invalid"
    ) -> bytes:
        """Record a request head refused before it became a flow (too large, or refused by
        `check_head`) as the fast plane does, from its raw bytes; let the rules observe it with
        the status sent; return proxylog's reply. Status 0: a head that is recorded `error`
        with no reply (held, and its client then dropped). Called by GuardedHttp1Server;
        never raises."""
        self._unread.discard(client.id)
        runtime = self.runtime
        if runtime is None:
            return make_reply(status, "", head_only=False)
        self._guard.uncount(client)  # it only lingers to read its reply now
        try:
            parsed = lenient_head(raw) if b"\n" in raw else None
            method, target, version, fields = parsed or (b"", b"", b"HTTP/1.1", [])
            peer, tls = client.peername[:2], client.tls_established
            head = RequestHead(method, target, version, fields, peer, tls, time.time(), len(raw))
            ex: Exchange = self.pipeline.begin(head)  # facts too: smuggling probes count toward status rules
            ex.fail(error, why)
            answer = make_reply(status, ex.request_id, ex.method == b"HEAD") if status else b""
            if status:
                ex.answered(status, answer)
            self.pipeline.finish(ex)
            return answer
        except Exception:
            runtime.internal_errors += 1
            logger.exception("internal error recording a refused request head")
            return make_reply(status, "", head_only=False)

    @guarded
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._unread.discard(flow.client_conn.id)
        runtime = self.runtime
        if runtime is None or state_of(flow) is not None:
            return
        self._headers_due.disarm(flow.client_conn)
        state = start_flow(flow, self.pipeline)
        self._inflight[flow.id] = flow
        self._guard.begun(flow)
        self._drained.clear()
        if flow.error or flow.response:
            return
        if self._draining:
            reject(flow, state, 503, "shutdown", "proxylog is shutting down")
            return
        if state.host_headers > 1:
            reject(flow, state, 400, "request_invalid", "more than one Host header")
            return
        if _over_body_limit(flow, runtime.config.limits.body_size):
            return  # mitmproxy refuses it next (413): no verdict, so no second reply
        if self._apply(flow, state):
            return
        if flow.request.stream or state.chunked_upload:
            # Large or chunked uploads go straight to Puma, counted, never stored.
            state.request_counter = flow.request.stream = ByteCounter()

    def _apply(self, flow: http.HTTPFlow, state: FlowState) -> bool:
        """The pipeline's request-time decision: tags to Puma, and the reply when a block is
        enforced. True if blocked."""
        return self._carry_out(flow, state, self.pipeline.decide(state))

    @staticmethod
    def _carry_out(flow: http.HTTPFlow, state: FlowState, block: Block | None) -> bool:
        """Give Puma the request's tags (the pipeline added X-Proxylog-Tags) and answer now if
        `block`. True if blocked."""
        if state.tags:
            flow.request.headers.fields = tuple(state.upstream_headers)
        if block is None:
            return False
        reply(flow, state, block.status, retry_after=block.retry_after, body=block.body)
        return True

    @guarded
    def request(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if self.runtime is None or state is None or flow.response or flow.error:
            return
        if state.request_counter is None and self._check_body(flow, state):
            return
        self._upstream_due.arm(flow)

    def _check_body(self, flow: http.HTTPFlow, state: FlowState) -> bool:
        """The pipeline's body-time decision on a buffered body (never a streamed one): tags
        to Puma, and the reply when a block is enforced. True if blocked."""
        body = flow.request.raw_content
        limit = self.pipeline.body_limit(state)
        if not body or not limit or len(body) > limit:
            return False
        return self._carry_out(flow, state, self.pipeline.decide_body(state, body))

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
        runtime = self.runtime
        if runtime is not None:
            cap = runtime.config.limits.connections_per_client
            if not self._guard.connected(client, cap, runtime.trusted.is_trusted):
                client.error = "over the per-client connection limit"  # mitmproxy closes it now
                return
        self._headers_due.arm(client)
        self._unread.add(client.id)

    @guarded
    def client_disconnected(self, client: Any) -> None:
        self._headers_due.disarm(client)
        self._guard.disconnected(client)
        self._count_unread(client.id)

    def _banned(self) -> None:
        """A ban was imposed: close the connections of every client an enforced ban covers."""
        runtime = self.runtime
        if runtime is not None:
            trusted = runtime.trusted
            self._guard.banned(lambda ip: not trusted.is_trusted(ip) and runtime.ban_enforced(ip))

    def _count_unread(self, client_id: str) -> None:
        """Count a client connection that ended before a request was read from it (closed or
        timed out before or inside its first head, a TLS hello): it has no record."""
        if client_id in self._unread:
            self._unread.discard(client_id)
            if self.runtime is not None:
                self.runtime.metrics.unreadable_connections += 1

    async def _sweep_deadlines(self) -> None:
        while True:
            await asyncio.sleep(TIMEOUT_SWEEP_S)
            for flow in self._upstream_due.expired():
                self._upstream_timeout(flow)
            for client in self._headers_due.expired():
                self._header_timeout(client)
            for client in self._guard.write_due.expired():
                self._write_timeout(client)

    @guarded
    def _upstream_timeout(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.done or flow.response is not None or flow.error is not None:
            return
        state.timed_out = True
        if not connections.abort_upstream(flow, "proxylog: upstream timeout"):
            logger.warning("upstream timeout but no upstream connection to abort")

    @guarded
    def _header_timeout(self, client: Any) -> None:
        if connections.close_client(client, "proxylog: request headers too slow") and self.runtime:
            self.runtime.metrics.header_timeouts += 1
            logger.info("closed %s: no complete request headers in time", client.peername[0])

    @guarded
    def _write_timeout(self, client: Any) -> None:
        self._guard.write_expired(client)
        logger.info("closed %s: its response was left unread", client.peername[0])

    @guarded
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or self.runtime is None:
            return
        self._upstream_due.disarm(flow)
        restore_client_view(flow, state)
        why = invalid_response_head(flow.response) if flow.response is not None else None
        if why is not None:
            reject(flow, state, 502, "upstream_invalid", why)
            return
        if self._guard.closing(flow.client_conn) and flow.response is not None:
            flow.response.headers["connection"] = "close"  # banned meanwhile: its last response
        if start_response(flow, state, self.pipeline):
            # Streamed as it arrives and counted; mitmproxy would otherwise buffer it whole.
            state.response_counter = flow.response.stream = ByteCounter()  # type: ignore[union-attr]

    @guarded
    def response(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None:
            return
        if flow.response is not None and flow.response.status_code == 101 and not state.replied:
            # a tunnel follows (raw TCP: `websocket` is off): recorded when it closes
            settle(flow, state)
            state.upgraded = True
            self._tunnels[flow.client_conn.id] = flow
            return
        self._finish(flow, state)

    @guarded
    def tcp_message(self, tcp_flow: Any) -> None:
        flow = self._tunnels.get(tcp_flow.client_conn.id)
        state = state_of(flow) if flow is not None else None
        if state is not None:
            message = tcp_flow.messages[-1]
            if message.from_client:
                state.request_body_bytes += len(message.content)
            else:
                state.response_body_bytes += len(message.content)
        tcp_flow.messages.clear()  # counted, never kept: a cable may stay open for hours

    @guarded
    def tcp_end(self, tcp_flow: Any) -> None:
        flow = self._tunnels.pop(tcp_flow.client_conn.id, None)
        state = state_of(flow) if flow is not None else None
        if flow is not None and state is not None:
            self._finish(flow, state)

    tcp_error = tcp_end

    @guarded
    def error(self, flow: http.HTTPFlow) -> None:
        state = state_of(flow)
        if state is None or state.done:
            return
        self._upstream_due.disarm(flow)
        restore_client_view(flow, state)
        if state.error_type is None and not state.replied:
            # (when proxylog already answered, e.g. a block, this is just its own kill)
            reply_to_error(flow, state)
        self._finish(flow, state)

    def _finish(self, flow: http.HTTPFlow, state: FlowState) -> None:
        if state.done or self.runtime is None:
            return
        self._upstream_due.disarm(flow)
        keep_alive = flow.request.http_version.startswith("HTTP/1") and not (
            flow.websocket or (flow.response is not None and flow.response.status_code == 101)
        )
        if keep_alive and flow.client_conn.connected and not self._draining:
            self._headers_due.arm(flow.client_conn)  # the next request
        if state.replied and flow.request.http_version.startswith("HTTP/1"):
            self._guard.uncount(flow.client_conn)  # proxylog's final reply: it only lingers now
        self._guard.ended(flow)
        try:
            self._record(flow, state)
        finally:
            self._inflight.pop(flow.id, None)
            if not self._inflight:
                self._drained.set()

    def _record(self, flow: http.HTTPFlow, state: FlowState) -> None:
        if self.runtime is not None:
            settle(flow, state)
            self.pipeline.finish(state)


def _over_body_limit(flow: http.HTTPFlow, limit: int | None) -> bool:
    """True when the declared Content-Length exceeds `limits.body_size`."""
    if limit is None:
        return False
    length = flow.request.headers.get("content-length", "")
    return length.isdigit() and int(length) > limit
