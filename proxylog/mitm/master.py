"""The lean mitmproxy Master behind `proxylog serve`: only the addons a front proxy needs.

`mitmdump` loads ~35 addons and dispatches every hook to each; this Master loads core,
proxyserver, next_layer, errorcheck, tlsconfig only when a mode needs TLS, and ProxyLog.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks, master, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
from mitmproxy.proxy import mode_specs

from proxylog.config import Config, ConfigError
from proxylog.diagnostics import announce_listening
from proxylog.mitm.addon import ProxyLog
from proxylog.mitm.reads import HeadReads

logger = logging.getLogger("proxylog")


def proxy_modes(config: Config) -> list[str]:
    """mitmproxy mode specs: `modes:` verbatim, else reverse to `upstream` at `listen`."""
    if config.modes:
        specs = list(config.modes)
    elif config.upstream:
        host, port = config.listen
        specs = [f"reverse:{config.upstream}@{host}:{port}" if host else f"reverse:{config.upstream}@{port}"]
    else:
        raise ConfigError("upstream", "is required unless `modes:` is given")
    for index, spec in enumerate(specs):
        try:
            mode_specs.ProxyMode.parse(spec)
        except ValueError as e:
            raise ConfigError(f"modes[{index}]", f"invalid mitmproxy mode {spec!r}: {e}") from e
    return specs


def needs_tls(specs: list[str]) -> bool:
    """True unless every mode is a plain-HTTP reverse proxy (then no CA is ever created)."""
    for spec in specs:
        mode = mode_specs.ProxyMode.parse(spec)
        if not (isinstance(mode, mode_specs.ReverseMode) and mode.scheme == "http"):
            return True
    return False


def master_options(config: Config, specs: list[str]) -> dict[str, Any]:
    """The mitmproxy options a front proxy needs, from the config: lazy upstream connections,
    the client's Host kept, inbound headers validated, large bodies streamed."""
    return {
        "mode": specs,
        "connection_strategy": "lazy",
        "keep_host_header": True,
        "validate_inbound_headers": True,
        "websocket": False,  # an upgraded connection is a counted byte tunnel (raw TCP)
        "stream_large_bodies": str(config.limits.stream_threshold),
        "body_size_limit": None if config.limits.body_size is None else str(config.limits.body_size),
        "tcp_timeout": max(1, int(config.timeouts.idle)),
        "confdir": os.path.join(config.state_dir, "mitmproxy"),
    }


class CachedDispatch(addonmanager.AddonManager):
    """mitmproxy's AddonManager with a per-hook table of handlers.

    mitmproxy walks every addon with getattr for every hook of every flow, then fires an
    extra `update` hook after each flow hook. With a fixed set of addons the handlers per
    hook never change, and no addon here implements `update`, so both are precomputed;
    the table is rebuilt whenever an addon is added or removed. Semantics are mitmproxy's:
    chain order, exceptions logged per addon, AddonHalt stops the chain.
    """

    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._handlers: dict[str, list[Callable[..., Any]]] = {}

    def register(self, addon: Any) -> Any:
        self._handlers.clear()
        return super().register(addon)

    def remove(self, addon: Any) -> None:
        self._handlers.clear()
        super().remove(addon)

    def _handlers_for(self, name: str) -> list[Callable[..., Any]]:
        handlers = self._handlers.get(name)
        if handlers is None:
            handlers = self._handlers[name] = [
                func for a in addonmanager.traverse(self.chain) if callable(func := getattr(a, name, None))
            ]
        return handlers

    async def trigger_event(self, event: hooks.Hook) -> None:
        args = event.args()
        for func in self._handlers_for(event.name):
            try:
                result = func(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as e:  # what addonmanager.safecall does, without a generator
                logger.error("Addon error: %s", e, exc_info=True)

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        message = event.args()[0]
        if isinstance(message, flow.Flow) and self._handlers_for("update"):
            await self.trigger_event(hooks.UpdateHook([message]))


class LeanMaster(master.Master):
    """A Master with only the addons proxylog needs, and a graceful SIGTERM/SIGINT drain: the
    mitmproxy data plane as `proxylog serve` runs it."""

    name = "mitmproxy"

    def __init__(self, config: Config, addon: ProxyLog | None = None, *, with_proxylog: bool = True) -> None:
        """`with_proxylog=False` builds the same master without the addon: the benchmarks'
        baseline for what ProxyLog itself costs."""
        super().__init__(options.Options(), with_termlog=False)
        self.addons = CachedDispatch(self)
        self.config = config
        self.proxylog = addon or ProxyLog(config)
        self._reloads: set[asyncio.Task[Any]] = set()
        specs = proxy_modes(config)
        tls = needs_tls(specs)
        extra: list[Any] = [tlsconfig.TlsConfig()] if tls else []
        self.addons.add(
            core.Core(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            *extra,
            errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
            *([HeadReads(), self.proxylog] if with_proxylog else []),
        )
        opts = master_options(config, specs)
        if tls:
            os.makedirs(opts["confdir"], mode=0o700, exist_ok=True)
        try:
            self.options.update(**opts)
        except exceptions.OptionsError as e:
            raise ConfigError("", str(e)) from e
        self._stopping = False

    @property
    def inflight(self) -> int:
        return self.proxylog.inflight

    def listen_addrs(self) -> list[tuple[str, int]]:
        ps = self.addons.get("proxyserver")
        return [(a[0], a[1]) for a in ps.listen_addrs()] if ps else []

    async def running(self) -> None:
        await super().running()
        announce_listening(self.listen_addrs(), self.config, self.name)

    def apply_options(self, config: Config) -> None:
        """Apply a reloaded config's proxy options (bodies, idle timeout); modes need a restart."""
        opts = master_options(config, proxy_modes(config))
        del opts["mode"], opts["confdir"]
        self.options.update(**opts)

    def request_stop(self, reason: str = "stop") -> None:
        """First call: stop accepting and drain in-flight requests; second call: exit now."""
        if self._stopping:
            logger.warning("%s again, exiting without waiting", reason)
            self.shutdown()
            return
        self._stopping = True
        logger.warning("%s received, draining in-flight requests", reason)
        asyncio.get_running_loop().create_task(self._graceful_stop())

    async def _graceful_stop(self) -> None:
        try:
            ps = self.addons.get("proxyserver")
            if ps is not None:
                await ps.servers.update([])  # close the listening sockets; open connections stay
            timeout = self.config.timeouts.drain
            if not await self.proxylog.drain(timeout):
                logger.error(
                    "%d requests still in flight after %.0fs drain timeout",
                    self.proxylog.inflight,
                    timeout,
                )
                self.proxylog.abandon_inflight()  # their records, before the sinks close
        except Exception:
            logger.exception("internal error while draining; stopping anyway")
        finally:  # never left waiting for a second signal
            self.shutdown()
