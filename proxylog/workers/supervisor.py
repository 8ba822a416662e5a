"""`proxylog serve --workers N`: N worker processes on one port, and the parent that keeps them.

Each worker is a whole `proxylog serve` on the fast plane, binding the listen port with
SO_REUSEPORT so the kernel spreads connections across them, with its own state directory,
control socket and files (proxylog.workers.layout). The supervisor:

- starts them, and exits 1 if one cannot start (its error is on stderr), before listening;
- restarts a worker that dies, with backoff (0.5 s doubling to 30 s, reset once a worker has
  run 10 s); the new worker's first record is a `worker.restarted` event, and
  `proxylog_worker_restarts_total` counts them;
- owns the control socket: `proxylog ctl` acts on every worker (`status` shows each), and
  one metrics endpoint that sums the workers' (proxylog.workers.fanout);
- reloads on SIGHUP or `ctl reload`: the new config is validated once, here, and only a
  valid one is sent to the workers; on SIGTERM or SIGINT, every worker drains and flushes;
- relays the workers' stdout to its own, whole lines only, so two workers' records never
  interleave on one pipe;
- with the memory state backend, shares bans: a ban one worker's rules make is pushed to the
  others within a second (counters stay per worker; `state: {backend: redis}` shares them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxylog import __version__
from proxylog.app import RESTARTED_ENV, STOP_SIGNALS, ignore_signals, watch_file
from proxylog.config import Config, ConfigError, check_workers
from proxylog.ops.client import ControlClient
from proxylog.ops.control import Command, CommandError, ControlEndpoint, who_sent
from proxylog.ops.httpserver import Request
from proxylog.ops.prometheus import MetricsEndpoint
from proxylog.runtime import check_config
from proxylog.workers.fanout import merged_exposition, summed, union_bans
from proxylog.workers.layout import worker_socket

logger = logging.getLogger("proxylog.workers")

STARTUP_TIMEOUT = 30.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0  # a worker that ran this long restarts at once, not after a backoff
SHARE_INTERVAL = 1.0  # memory backend: how often bans are shared between workers
STOP_GRACE = 15.0  # beyond timeouts.drain, before a worker that will not stop is killed
RELAY_CHUNK = 1 << 16


class StartupFailed(Exception):
    """A worker exited, or never listened, while starting."""


@dataclass(slots=True)
class Worker:
    """One worker process and what the supervisor knows of it."""

    index: int
    socket: str
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    ready: bool = False
    last_exit: str | None = None
    delay: float = 0.0
    relay: asyncio.Task[None] | None = None
    client: ControlClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = ControlClient(socket_path=self.socket, timeout=30.0)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """Runs `config.workers` workers until SIGTERM/SIGINT. `command(index)` is the argv of
    worker `index`; `load()` reads the config again, as the workers will on a reload."""

    def __init__(
        self, config: Config, command: Callable[[int], list[str]], load: Callable[[], Config]
    ) -> None:
        self.config = config
        self.command = command
        self.load = load
        self.workers = [Worker(i, worker_socket(config, i)) for i in range(config.workers)]
        self.shared_state = config.state.backend != "memory"
        self.started = time.monotonic()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._lock = asyncio.Lock()  # one change at a time reaches the workers
        self._tasks: list[asyncio.Task[Any]] = []

    # -- running ------------------------------------------------------------------------

    async def run(self) -> int:
        if not self.shared_state:
            logger.warning(
                "%d workers with the memory state backend: rule counters are per worker (a client "
                "spread over them can make up to %d times a threshold before a ban); bans are shared "
                "through the supervisor within %.0f s. `state: {backend: redis}` shares counters too.",
                len(self.workers),
                len(self.workers),
                SHARE_INTERVAL,
            )
        loop = asyncio.get_running_loop()
        control = SupervisorControl(self)
        metrics = MetricsEndpoint(self.config.metrics, self.exposition)
        try:
            for worker in self.workers:
                await self._spawn(worker)
            await asyncio.gather(*(self._wait_ready(w) for w in self.workers))
            await control.start()
            await metrics.start()
        except (StartupFailed, OSError) as e:
            print(f"proxylog: cannot start: {e}", file=sys.stderr, flush=True)
            await self._stop_workers()
            await control.stop()
            await metrics.stop()
            return 1
        host, port = self.config.listen
        print(
            f"proxylog: listening on {host}:{port} -> {self.config.upstream} "
            f"(engine: fast, {len(self.workers)} workers)",
            file=sys.stderr,
            flush=True,
        )
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._spawn_task, lambda: self._reload_logged("SIGHUP"))
        self._tasks += [loop.create_task(self._keep(w)) for w in self.workers]
        if not self.shared_state and len(self.workers) > 1:
            self._tasks.append(loop.create_task(self._share_bans_forever()))
        if self.config.control.watch and self.config.source:
            interval = self.config.control.watch_interval
            self._tasks.append(
                loop.create_task(
                    watch_file(self.config.source, interval, lambda: self._reload_logged("file watch"))
                )
            )
        try:
            await self._stopped.wait()
            await self._stop_workers()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await control.stop()
            await metrics.stop()
            ignore_signals(loop)
        return 0

    async def _reload_logged(self, who: str) -> None:
        """A reload nobody waits for the answer of (SIGHUP, the file watch): a refusal is
        logged by `reload`, and the watch goes on."""
        with contextlib.suppress(CommandError):
            await self.reload(who)

    def _spawn_task(self, make: Callable[[], Any]) -> None:
        task = asyncio.get_running_loop().create_task(make())
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def request_stop(self, reason: str) -> None:
        """First signal: every worker drains and flushes (run() tells them); a second: they
        are told again, and stop without waiting."""
        if not self._stopping:
            logger.warning("%s received, draining %d workers", reason, len(self.workers))
            self._stopping = True
            self._stopped.set()
            return
        logger.warning("%s again, telling the workers to stop without waiting", reason)
        for worker in self.workers:
            if worker.alive:
                assert worker.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)

    async def _stop_workers(self) -> None:
        self._stopping = True
        alive = [w for w in self.workers if w.alive]
        for worker in alive:
            assert worker.proc is not None
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        procs = [w.proc for w in alive if w.proc is not None]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(p.wait() for p in procs)), self.config.timeouts.drain + STOP_GRACE
            )
        except TimeoutError:
            for proc in procs:
                if proc.returncode is None:
                    logger.error("worker pid %d did not stop in time: killing it", proc.pid)
                    proc.kill()
            await asyncio.gather(*(p.wait() for p in procs))
        await asyncio.gather(*(w.relay for w in self.workers if w.relay is not None), return_exceptions=True)

    async def _spawn(self, worker: Worker, previous: dict[str, Any] | None = None) -> None:
        env = dict(os.environ)
        if previous is not None:
            env[RESTARTED_ENV] = orjson.dumps(previous).decode()
        read_end, write_end = os.pipe()
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *self.command(worker.index),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_end,
                env=env,
                # Ctrl-C on a terminal reaches the supervisor only; it tells the workers.
                start_new_session=True,
            )
        finally:
            os.close(write_end)
        worker.started = time.monotonic()
        worker.ready = False
        worker.relay = asyncio.get_running_loop().create_task(self._relay(worker, read_end))

    async def _relay(self, worker: Worker, fd: int) -> None:
        """Copy a worker's stdout to ours, only up to its last complete line: records from
        two workers never interleave mid-line. If our stdout breaks, the worker's pipe is
        closed, so its stdout sink fails and counts what it cannot deliver."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=RELAY_CHUNK, loop=loop)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", buffering=0)
        )
        out = sys.stdout.buffer
        pending = b""
        try:
            while chunk := await reader.read(RELAY_CHUNK):
                pending += chunk
                cut = pending.rfind(b"\n") + 1
                if cut:
                    out.write(pending[:cut])
                    out.flush()
                    pending = pending[cut:]
        except OSError as e:
            logger.error("cannot write worker %d's records to stdout (%s): closing its pipe", worker.index, e)
        finally:
            transport.close()
        if pending:
            logger.error(
                "worker %d ended in the middle of a stdout line: %d bytes not relayed",
                worker.index,
                len(pending),
            )

    async def _wait_ready(self, worker: Worker) -> None:
        """Until the worker listens (its status says so); StartupFailed if it exits first."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        quick = ControlClient(socket_path=worker.socket, timeout=2.0)
        while time.monotonic() < deadline:
            if not worker.alive:
                assert worker.proc is not None and worker.proc.returncode is not None
                raise StartupFailed(
                    f"worker {worker.index} {describe_exit(worker.proc.returncode)} before listening"
                )
            if os.path.exists(worker.socket):
                with contextlib.suppress(Exception):
                    _, status = await asyncio.to_thread(quick.call, "GET", "/status")
                    if status.get("listening"):
                        worker.ready = True
                        return
            await asyncio.sleep(0.05)
        raise StartupFailed(f"worker {worker.index} did not listen within {STARTUP_TIMEOUT:.0f} s")

    async def _keep(self, worker: Worker) -> None:
        """Restart `worker` whenever it dies, until the supervisor stops."""
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            if worker.relay is not None:
                await asyncio.gather(worker.relay, return_exceptions=True)
            if self._stopping:
                return
            ran = time.monotonic() - worker.started
            worker.ready = False
            worker.restarts += 1
            worker.last_exit = describe_exit(code)
            worker.delay = (
                BACKOFF_FIRST
                if ran >= STABLE_AFTER
                else min(max(worker.delay * 2, BACKOFF_FIRST), BACKOFF_MAX)
            )
            logger.error(
                "worker %d (pid %d) %s after %.1f s; restarting it in %.1f s",
                worker.index,
                worker.proc.pid,
                worker.last_exit,
                ran,
                worker.delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), worker.delay)
            if self._stopping:
                return
            previous = {
                "index": worker.index,
                "pid": worker.proc.pid,
                "exit": worker.last_exit,
                "ran_s": round(ran, 1),
                "restarts": worker.restarts,
            }
            await self._spawn(worker, previous)
            try:
                await self._wait_ready(worker)
            except StartupFailed as e:
                logger.error("%s", e)
                if worker.alive:  # hung before listening: replaced like a dead one
                    assert worker.proc is not None
                    worker.proc.kill()
                continue
            if not self.shared_state:
                async with self._lock:
                    await self._sync(worker)

    # -- talking to workers -------------------------------------------------------------

    def ready(self) -> list[Worker]:
        return [w for w in self.workers if w.ready and w.alive]

    async def call(
        self,
        workers: list[Worker],
        method: str,
        path: str,
        args: dict[str, Any] | None = None,
        who: str | None = None,
    ) -> list[tuple[Worker, dict[str, Any]]]:
        """Each worker's answer (or ``{"ok": false, "error": ...}`` if unreachable)."""

        async def one(worker: Worker) -> tuple[Worker, dict[str, Any]]:
            try:
                _, payload = await asyncio.to_thread(worker.client.call, method, path, args, who)
            except Exception as e:  # unreachable, restarting, or a garbled answer
                payload = {"ok": False, "error": f"worker {worker.index} unreachable: {e}"}
            return worker, payload

        return list(await asyncio.gather(*(one(w) for w in workers)))

    def targets(self, path: str) -> list[Worker]:
        """The workers a change goes to: every one, except that with shared state a change of
        that state (mode, bans, allowlist) goes to one, and the backend carries it to the
        rest, as it does to other hosts."""
        ready = self.ready()
        if not ready:
            raise CommandError("no worker is running")
        return ready[:1] if self.shared_state and path in SHARED_CHANGES else ready

    async def exposition(self) -> bytes:
        answers = await self.call(self.ready(), "GET", "/metrics")
        texts = [p["exposition"] for _, p in answers if p.get("ok")]
        return merged_exposition(texts, self._own_metrics())

    def _own_metrics(self) -> list[Metric]:
        workers = GaugeMetricFamily("proxylog_workers", "Worker processes by state.", labels=["state"])
        workers.add_metric(["configured"], len(self.workers))
        workers.add_metric(["ready"], len(self.ready()))
        restarts = CounterMetricFamily(
            "proxylog_worker_restarts", "Worker processes restarted after they died.", labels=["worker"]
        )
        for worker in self.workers:
            restarts.add_metric([str(worker.index)], worker.restarts)
        return [workers, restarts]

    async def reload(self, who: str) -> dict[str, Any]:
        """Validate the config once; only if it is valid, every worker reloads it."""
        async with self._lock:
            try:
                new = self.load()
                check_workers(new)
                await asyncio.to_thread(check_config, new)
            except ConfigError as e:
                logger.error("reload (%s) refused, every worker keeps its config: %s", who, e)
                raise CommandError(f"reload failed, the running config is unchanged: {e}") from e
            answers = await self.call(self.ready(), "POST", "/reload", {}, who)
        failed = [p["error"] for _, p in answers if not p.get("ok")]
        if failed:
            logger.error("reload (%s): %s", who, "; ".join(failed))
            raise CommandError("reload failed on some workers: " + "; ".join(failed))
        warnings = (
            ["workers changed: restart proxylog to apply it"] if new.workers != self.config.workers else []
        )
        for _, payload in answers:
            warnings += [w for w in payload.get("warnings", []) if w not in warnings]
        logger.warning(
            "reloaded %s on %d workers (%s)", new.source or "the built-in defaults", len(answers), who
        )
        return {"config": new.source, "warnings": warnings, "workers": len(answers)}

    async def _share_bans_forever(self) -> None:
        while True:
            await asyncio.sleep(SHARE_INTERVAL)
            async with self._lock:
                await self._share_bans(self.ready())

    async def _share_bans(self, workers: list[Worker]) -> None:
        """Every active ban on every worker (memory backend): a ban a worker's rules made is
        pushed to the workers that lack it, for the time it has left."""
        answers = await self.call(workers, "GET", "/bans")
        have = {w.index: {b["key"] for b in p.get("bans", [])} for w, p in answers if p.get("ok")}
        now = time.time()
        for ban in union_bans(p["bans"] for _, p in answers if p.get("ok")):
            left = ban["until"] - now
            if left < 2:  # about to end everywhere: pushing it would only extend it
                continue
            lacking = [w for w in workers if w.index in have and ban["key"] not in have[w.index]]
            if lacking:
                reason = f"shared by the supervisor: rule {ban['rule']}" + (
                    f", {ban['reason']}" if ban.get("reason") else ""
                )
                args = {"key": ban["key"], "ttl": math.ceil(left), "reason": reason}
                await self.call(lacking, "POST", "/ban", args, "the supervisor")

    async def _sync(self, worker: Worker) -> None:
        """Bring a restarted worker up to its peers (memory backend): mode, allowlist, bans."""
        peers = [w for w in self.ready() if w is not worker]
        if not peers:
            return
        [(_, mode)] = await self.call(peers[:1], "GET", "/mode")
        [(_, own)] = await self.call([worker], "GET", "/mode")
        if mode.get("ok") and own.get("ok") and mode["mode"] != own["mode"]:
            await self.call([worker], "POST", "/mode", {"mode": mode["mode"]}, "the supervisor (sync)")
        [(_, allow)] = await self.call(peers[:1], "GET", "/allow")
        [(_, mine)] = await self.call([worker], "GET", "/allow")
        if allow.get("ok") and mine.get("ok"):
            for cidr in sorted(set(allow["allow"]) - set(mine["allow"])):
                await self.call([worker], "POST", "/allow", {"cidr": cidr}, "the supervisor (sync)")
        await self._share_bans([worker, *peers])


# -- the supervisor's control API ---------------------------------------------------------

# Changes of what the state backend shares between processes and hosts.
SHARED_CHANGES = frozenset({"/mode", "/ban", "/unban", "/allow", "/disallow"})


class SupervisorControl(ControlEndpoint):
    """The control socket `proxylog ctl` finds: SUPERVISOR_COMMANDS, on every worker."""

    def __init__(self, supervisor: Supervisor) -> None:
        config = supervisor.config
        super().__init__(config.control, config.control_socket, SUPERVISOR_COMMANDS)
        self.supervisor = supervisor


def _sup(endpoint: SupervisorControl) -> Supervisor:
    return endpoint.supervisor


def _answers_or_fail(answers: list[tuple[Worker, dict[str, Any]]]) -> list[dict[str, Any]]:
    ok = [p for _, p in answers if p.get("ok")]
    if not ok:
        raise CommandError("; ".join(str(p.get("error")) for _, p in answers) or "no worker answered")
    return ok


async def _forward(endpoint: SupervisorControl, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    """A change (mode, ban, unban, allow, disallow, reopen): to every worker, or to one with
    shared state; the answer is the first worker's, with each worker's outcome."""
    supervisor = _sup(endpoint)
    async with supervisor._lock:
        answers = await supervisor.call(
            supervisor.targets(request.path), request.method, request.path, args, who_sent(request)
        )
    ok = _answers_or_fail(answers)
    result = {k: v for k, v in ok[0].items() if k != "ok"}
    result["workers"] = [
        {"index": w.index, "ok": bool(p.get("ok")), **({} if p.get("ok") else {"error": p.get("error")})}
        for w, p in answers
    ]
    if len(ok) < len(answers):
        failed = ", ".join(str(w.index) for w, p in answers if not p.get("ok"))
        result["warning"] = f"not applied on worker {failed}"
    return result


async def _mode(endpoint: SupervisorControl, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    """GET /mode: the mode, and each worker's when they differ (a change still on its way)."""
    answers = await _sup(endpoint).call(_sup(endpoint).ready(), "GET", "/mode")
    ok = _answers_or_fail(answers)
    result: dict[str, Any] = {"mode": ok[0]["mode"]}
    if len({p["mode"] for p in ok}) > 1:
        result["workers"] = {str(w.index): p.get("mode") for w, p in answers}
    return result


async def _bans(endpoint: SupervisorControl, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    ok = _answers_or_fail(await _sup(endpoint).call(_sup(endpoint).ready(), "GET", "/bans"))
    return {"bans": union_bans(p["bans"] for p in ok)}


async def _allowlist(endpoint: SupervisorControl, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    ok = _answers_or_fail(await _sup(endpoint).call(_sup(endpoint).ready(), "GET", "/allow"))
    return {"allow": sorted({cidr for p in ok for cidr in p["allow"]})}


async def _reload(endpoint: SupervisorControl, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    return await _sup(endpoint).reload(who_sent(request))


async def _stats(endpoint: SupervisorControl, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    supervisor = _sup(endpoint)
    answers = await supervisor.call(supervisor.ready(), "GET", "/stats")
    ok = _answers_or_fail(answers)
    result: dict[str, Any] = summed([{k: v for k, v in p.items() if k != "ok"} for p in ok])
    result["workers"] = [{"index": w.index, "pid": w.pid, "restarts": w.restarts} for w in supervisor.workers]
    return result


async def _status(endpoint: SupervisorControl, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    supervisor = _sup(endpoint)
    answers = dict((w.index, p) for w, p in await supervisor.call(supervisor.workers, "GET", "/status"))
    bans = await supervisor.call(supervisor.ready(), "GET", "/bans")
    config = supervisor.config
    first = next((p for p in answers.values() if p.get("ok")), {})
    workers = []
    for worker in supervisor.workers:
        status = answers[worker.index]
        workers.append(
            {
                "index": worker.index,
                "pid": worker.pid,
                "ready": worker.ready and worker.alive,
                "restarts": worker.restarts,
                "last_exit": worker.last_exit,
                **(
                    {k: status.get(k) for k in ("mode", "uptime_s", "inflight", "bans")}
                    if status.get("ok")
                    else {"error": status.get("error")}
                ),
            }
        )
    sinks = [
        {**sink, "worker": index}
        for index, p in answers.items()
        if p.get("ok")
        for sink in p.get("sinks", [])
    ]
    return {
        "version": __version__,
        "mode": first.get("mode"),
        "uptime_s": round(time.monotonic() - supervisor.started, 1),
        "config": config.source,
        "config_path": os.path.realpath(config.source) if config.source else None,
        "engine": "fast",
        "inflight": sum(p.get("inflight", 0) for p in answers.values() if p.get("ok")),
        "bans": len(union_bans(p["bans"] for _, p in bans if p.get("ok"))),
        "state": first.get("state"),
        "sinks": sinks,
        "workers": workers,
    }


async def _metrics(endpoint: SupervisorControl, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    return {"exposition": (await _sup(endpoint).exposition()).decode()}


SUPERVISOR_COMMANDS: dict[tuple[str, str], Command] = {
    ("GET", "/status"): _status,
    ("GET", "/mode"): _mode,
    ("POST", "/mode"): _forward,
    ("GET", "/bans"): _bans,
    ("POST", "/ban"): _forward,
    ("POST", "/unban"): _forward,
    ("GET", "/allow"): _allowlist,
    ("POST", "/allow"): _forward,
    ("POST", "/disallow"): _forward,
    ("POST", "/reload"): _reload,
    ("POST", "/reopen"): _forward,
    ("GET", "/stats"): _stats,
    ("GET", "/metrics"): _metrics,
}
