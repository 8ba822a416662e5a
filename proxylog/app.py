"""The composition root of `proxylog serve`: the runtime, the data plane that serves, the
control and metrics endpoints, the config watcher, and the signals that drive them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Protocol

from proxylog.config import Config, serving_engine
from proxylog.ops.control import ControlServer, MetricsServer
from proxylog.runtime import Runtime
from proxylog.state.file import StateFile

logger = logging.getLogger("proxylog")


class DataPlane(Protocol):
    """What `serve` needs of a data plane: it serves from `run` until `request_stop`, then
    closes the runtime (every sink flushed)."""

    name: str

    @property
    def inflight(self) -> int: ...

    async def run(self) -> None: ...

    def request_stop(self, reason: str) -> None: ...


def build_plane(runtime: Runtime) -> DataPlane:
    """The data plane `engine:` chooses; mitmproxy is imported only when it serves."""
    if serving_engine(runtime.config) == "fast":
        from proxylog.fast.plane import FastPlane

        return FastPlane(runtime)
    from proxylog.mitm.addon import ProxyLog
    from proxylog.mitm.master import LeanMaster, proxy_modes

    master = LeanMaster(runtime.config, ProxyLog(runtime=runtime))
    runtime.hooks.validate.append(proxy_modes)
    runtime.hooks.apply.append(master.apply_options)
    return master


async def serve(
    config: Config, *, enforce: bool = False, flags: Callable[[Config], Config] | None = None
) -> int:
    """Run `proxylog serve` until SIGTERM/SIGINT: build the runtime (restoring the persisted
    mode and bans), start the control and metrics endpoints, then the data plane. Returns
    the exit code."""
    runtime = Runtime(config, state=StateFile(config.state_dir), flags=flags)
    runtime.restore()
    if enforce:  # the operator's choice, even when the config already enforces
        runtime.set_mode("enforce", "proxylog serve --enforce")
    plane = build_plane(runtime)
    runtime.hooks.validate.append(serving_engine)
    control = ControlServer(runtime, extra_status=lambda: {"inflight": plane.inflight, "engine": plane.name})
    metrics = MetricsServer(runtime, inflight=lambda: plane.inflight)
    try:
        await control.start()
        await metrics.start()
    except OSError as e:
        await control.stop()
        print(f"proxylog: cannot start the control or metrics endpoint: {e}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, plane.request_stop, sig.name)
    loop.add_signal_handler(signal.SIGHUP, runtime.sighup)
    watcher = loop.create_task(watch(runtime)) if config.control.watch and config.source else None
    try:
        await plane.run()
    except OSError as e:
        print(f"proxylog: cannot listen on {config.listen[0]}:{config.listen[1]}: {e}", file=sys.stderr)
        return 1
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await metrics.stop()
        await control.stop()
    return 0


async def watch(runtime: Runtime) -> None:
    """Reload when the config file's mtime or size changes (`control.watch`)."""
    source = runtime.config.source
    assert source is not None

    def stamp() -> tuple[float, int] | None:
        try:
            st = os.stat(source)
        except OSError:
            return None
        return st.st_mtime, st.st_size

    last = stamp()
    while True:
        await asyncio.sleep(runtime.config.control.watch_interval)
        current = stamp()
        if current is not None and current != last:
            last = current
            await runtime.reload("file watch")
