"""The composition root of `proxylog serve`: the runtime, the data plane that serves, the
control and metrics endpoints, the config watcher, and the signals that drive them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol

import orjson

from proxylog.config import Config, serving_engine
from proxylog.ops.control import ControlServer, MetricsServer
from proxylog.ops.prometheus import exposition
from proxylog.record import event_document
from proxylog.runtime import Runtime
from proxylog.state.file import StateFile

logger = logging.getLogger("proxylog")


class DataPlane(Protocol):
    """What `serve` needs of a data plane: it serves from `run` until `request_stop`, then
    closes the runtime (every sink flushed)."""

    name: str

    @property
    def inflight(self) -> int: ...

    def listen_addrs(self) -> list[tuple[str, int]]: ...

    async def run(self) -> None: ...

    def request_stop(self, reason: str) -> None: ...


def build_plane(runtime: Runtime, worker: int | None = None) -> DataPlane:
    """The data plane `engine:` chooses; mitmproxy is imported only when it serves. Worker
    `worker` of several shares the listening port with the others (SO_REUSEPORT)."""
    if serving_engine(runtime.config) == "fast":
        from proxylog.fast.plane import FastPlane

        return FastPlane(runtime, reuse_port=worker is not None, worker=worker)
    from proxylog.mitm.addon import ProxyLog
    from proxylog.mitm.master import LeanMaster, proxy_modes

    master = LeanMaster(runtime.config, ProxyLog(runtime=runtime))
    runtime.hooks.validate.append(proxy_modes)
    runtime.hooks.apply.append(master.apply_options)
    return master


async def serve(
    config: Config,
    *,
    enforce: bool = False,
    flags: Callable[[Config], Config] | None = None,
    worker: int | None = None,
) -> int:
    """Run `proxylog serve` until SIGTERM/SIGINT: build the runtime (restoring the persisted
    mode and bans), start the control and metrics endpoints, then the data plane. Returns
    the exit code. As worker `worker` of a supervisor (`serve --workers N`), `config` is
    already the worker's own (proxylog.workers.layout), and the worker stops when its
    supervisor is gone."""
    runtime = Runtime(config, state=StateFile(config.state_dir), flags=flags)
    runtime.restore()
    if enforce:  # the operator's choice, even when the config already enforces
        runtime.set_mode("enforce", "proxylog serve --enforce")
    plane = build_plane(runtime, worker)
    runtime.hooks.validate.append(serving_engine)

    def status() -> dict[str, object]:
        listening = [f"{host}:{port}" for host, port in plane.listen_addrs()]
        return {"inflight": plane.inflight, "engine": plane.name, "pid": os.getpid(), "listening": listening}

    metrics = MetricsServer(runtime, inflight=lambda: plane.inflight)
    control = ControlServer(runtime, extra_status=status, exposition=lambda: exposition(metrics.registry))
    if worker is not None:
        note_restart(runtime, worker)
    try:
        await control.start()
        await metrics.start()
    except OSError as e:
        await control.stop()
        print(f"proxylog: cannot start the control or metrics endpoint: {e}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, plane.request_stop, sig.name)
    loop.add_signal_handler(signal.SIGHUP, runtime.sighup)
    watcher = loop.create_task(watch(runtime)) if config.control.watch and config.source else None
    orphan = loop.create_task(stop_when_orphaned(plane)) if worker is not None else None
    try:
        await plane.run()
    except OSError as e:
        print(f"proxylog: cannot listen on {config.listen[0]}:{config.listen[1]}: {e}", file=sys.stderr)
        return 1
    finally:
        for task in (watcher, orphan):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await metrics.stop()
        await control.stop()
        ignore_signals(loop)
    return 0


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def ignore_signals(loop: asyncio.AbstractEventLoop) -> None:
    """From now on ignore SIGTERM, SIGINT and SIGHUP: the drain is over, and a late signal (a
    supervisor's or systemd's) must not turn the clean exit into death by signal. (Closing
    the loop would restore their default actions while the process still has to exit.)"""
    for sig in (*STOP_SIGNALS, signal.SIGHUP):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


# Set by the supervisor for a worker it restarts: what happened to the one before.
RESTARTED_ENV = "PROXYLOG_WORKER_RESTARTED"


def note_restart(runtime: Runtime, worker: int) -> None:
    """A restarted worker's first record: which worker, and how the one before it ended."""
    detail = os.environ.pop(RESTARTED_ENV, None)
    if detail is not None:
        previous = orjson.loads(detail)
        runtime.emit_document(event_document("worker.restarted", "process", worker=previous))
        logger.warning("worker %d restarted: the one before %s", worker, previous.get("exit"))


async def stop_when_orphaned(plane: DataPlane, interval: float = 1.0) -> None:
    """Drain and stop once the supervisor is gone (this process was reparented)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(interval)
    plane.request_stop("supervisor gone")


async def watch(runtime: Runtime) -> None:
    """Reload when the config file's mtime or size changes (`control.watch`)."""
    source = runtime.config.source
    assert source is not None
    await watch_file(source, runtime.config.control.watch_interval, lambda: runtime.reload("file watch"))


async def watch_file(source: str, interval: float, on_change: Callable[[], Awaitable[object]]) -> None:
    """Await `on_change` whenever `source`'s mtime or size changes, checking every `interval`."""

    def stamp() -> tuple[float, int] | None:
        try:
            st = os.stat(source)
        except OSError:
            return None
        return st.st_mtime, st.st_size

    last = stamp()
    while True:
        await asyncio.sleep(interval)
        current = stamp()
        if current is not None and current != last:
            last = current
            await on_change()
