"""The live runtime built from a Config: identity, redaction, rules, sinks, mode and metrics.

One Runtime lives as long as the process. A reload compiles the new config's parts and swaps
them in between two requests (everything here runs on the event loop), carrying over what
must survive: rule counters and bans, sinks whose spec did not change, the live mode.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from proxylog.alerts import AlertDispatcher
from proxylog.config import Config, ConfigError, load_config
from proxylog.config.rule_specs import RuleSpec
from proxylog.config.secrets import read_secret
from proxylog.config.sinks import SinkSpec
from proxylog.identity import TrustedProxies
from proxylog.metrics import RequestMetrics
from proxylog.record import (
    MODES,
    AccessRecord,
    Mode,
    ban_document,
    encode_document,
    encode_record,
    event_document,
)
from proxylog.redact import Redactor
from proxylog.redact.bodies import BodyParser, build_body_parser
from proxylog.rules import RuleEngine, RuleEvent
from proxylog.sinks import Sink, SinkWorker, build_sink
from proxylog.state import Store, build_store
from proxylog.state.file import StateFile

logger = logging.getLogger("proxylog")

# Keys a reload cannot apply to a running process: they need new listening sockets.
RESTART_KEYS = (
    "upstream",
    "listen",
    "modes",
    "engine",
    "workers",
    "state_dir",
    "state",
    "control",
    "metrics",
)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: `ok`, the error (naming the key path) if not, and warnings."""

    ok: bool
    error: str | None = None
    warnings: tuple[str, ...] = ()
    source: str | None = None


@dataclass
class _Options:
    """Hooks the proxy layer registers: extra validation, applying proxy options, and being
    told a ban was imposed (the plane then closes the banned clients' open connections)."""

    validate: list[Callable[[Config], object]] = field(default_factory=list)
    apply: list[Callable[[Config], None]] = field(default_factory=list)
    banned: list[Callable[[], None]] = field(default_factory=list)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None with another C library (musl has none)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


# After a burst (a thousand connections each holding a request head, then gone) the freed
# memory stays in the C heap: glibc returns only the top of it to the system by itself.
# malloc_trim(0) hands back every free page; about 9 µs when there is nothing to give back.
MALLOC_TRIM = _malloc_trim()


class Runtime:
    """Everything a request needs, compiled once per config. `emit` is the only way a record
    leaves the process; it is synchronous, never blocks and never raises."""

    def __init__(
        self,
        config: Config,
        sinks: Sequence[Sink] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        state: StateFile | None = None,
        flags: Callable[[Config], Config] | None = None,
        upkeep_interval: float = 1.0,
        upkeep_every: int = 10,
    ) -> None:
        """`sinks` replaces the configured sinks (tests pass a MemorySink); `state` persists
        the live mode and bans (None: nothing is persisted); `flags` re-applies command-line
        overrides to a reloaded config."""
        self.config = config
        self.flags = flags
        self.clock = clock
        self.upkeep_interval = upkeep_interval
        self.upkeep_every = upkeep_every
        self.mode = config.mode
        # The mode an operator chose (`ctl mode`, `serve --enforce`): it outlives restarts and
        # reloads. None: the config's `mode:` decides.
        self.mode_override: Mode | None = None
        # Restart keys (a reload keeps them): worked out once, read per upstream connection.
        # The TCP ports of proxylog's own endpoints, never a destination; the upstream.
        endpoints = (config.control.tcp, config.metrics.listen)
        self.own_ports = frozenset(address[1] for address in endpoints if address is not None)
        self.upstream_address = _address(config.upstream) if config.upstream else None
        self.started = clock()
        self.internal_errors = 0
        self.metrics = RequestMetrics()
        self.state = state
        self.hooks = _Options()
        self.alerts: AlertDispatcher | None = None
        # Counters and bans (and, shared, the mode and runtime allowlist): `state:` says where.
        self.store = build_store(config.state, clock)
        self.store.listener = self._on_shared
        self._started = False
        self._rule_specs: dict[str, RuleSpec] = {}
        self._compile(config, previous=None)
        if sinks is None:
            self.workers = [
                SinkWorker(build_sink(spec), spec, state_dir=config.state_dir, clean=self._clean_text)
                for spec in config.sinks
            ]
        else:
            self.workers = [
                SinkWorker(s, SinkSpec(type="custom", name=s.name), clean=self._clean_text) for s in sinks
            ]
        self._saved_bans: list[Any] | None = None
        self._state_writer: ThreadPoolExecutor | None = None
        self._reload_lock = asyncio.Lock()
        self._last_save: Future[str | None] | None = None
        self._sink_health: dict[str, bool] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ticks = 0

    def _compile(self, config: Config, previous: RuleEngine | None) -> None:
        """Build the per-config parts, then swap them in together; rule state (from
        `previous`) and unchanged alert webhooks carry over. Raises ConfigError (a bad intel
        file, an unreadable token), changing nothing."""
        parts = compile_parts(config, self.clock, previous, self._on_rule_event, store=self.store)
        alerts = self.alerts
        if alerts is None or alerts.specs != config.alerts:
            alerts = (
                AlertDispatcher(
                    config.alerts,
                    self.emit_document,
                    clock=self.clock,
                    clean=self._clean_text,
                    anonymize=self._anonymize_client,
                    previous=self.alerts,
                )
                if config.alerts
                else None
            )
        if self.alerts is not None and alerts is not self.alerts:
            self.alerts.close(keep=alerts)
        self.trusted, self.redactor = parts.trusted, parts.redactor
        self.body_parser, self.engine = parts.body_parser, parts.engine
        self.alerts = alerts
        self._rule_specs = {rule.id: rule for rule in config.rules.rules}
        if alerts is not None and self._started:
            alerts.start()

    # -- the request path -------------------------------------------------------------------

    def emit(self, record: AccessRecord) -> None:
        """Count a record, redact it, encode it once and queue it on every sink."""
        self.metrics.observe(
            record.status,
            record.action,
            record.upstream_ms,
            record.duration_ns,
            record.request_bytes,
            record.response_bytes,
        )
        record = self.redactor(record)
        if self.alerts is not None:
            self.alerts.witness(record.client_ip, record.path, record.timestamp)
        self._submit(encode_record(record, self.config.record.schema))

    def emit_document(self, doc: dict[str, Any]) -> None:
        """Queue a non-access event (marker, audit, alert, ban) on every sink; with
        `redact.anonymize_ip` its client address is anonymised like a record's."""
        if self.redactor.spec.anonymize_ip and isinstance(client := doc.get("client"), dict):
            client["ip"] = self.redactor.anonymize_ip(client["ip"])
            alert = doc["proxylog"].get("alert")
            if isinstance(alert, dict) and isinstance(alert.get("key"), str):
                alert["key"] = self.redactor.anonymize_ip(alert["key"])
        self._submit(encode_document(doc, self.config.record.schema))

    def _submit(self, line: bytes) -> None:
        for worker in self.workers:
            worker.submit(line)

    # -- operations -------------------------------------------------------------------------

    def audit(self, command: str, who: str, old: Any = None, new: Any = None, **extra: Any) -> None:
        """Put an operator action into the access stream: who did what, old and new value."""
        audit = {"command": command, "who": who, "old": old, "new": new, **extra}
        self.emit_document(event_document(f"audit.{command}", "configuration", self.clock(), audit=audit))

    def set_mode(self, mode: str, who: str) -> str:
        """Switch monitor ↔ enforce now (the next request sees it); audited, and persisted as
        the operator's choice over the config's `mode:`. Returns the previous mode; raises
        ValueError for an unknown mode."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        old, self.mode = self.mode, Mode(mode)
        self.mode_override = self.mode
        self.audit("mode", who, old, mode)
        self.store.announce("mode", mode)
        self.persist()
        if self.mode is Mode.ENFORCE:
            self._bans_apply()  # bans made in monitor mode now refuse: close their connections
        return old

    def _on_shared(self, kind: str, value: str) -> None:
        """The shared state changed elsewhere (another instance's `ctl mode`, `ctl allow`),
        or its backend went away or came back: apply it here, audited and persisted."""
        who = f"state ({self.config.state.backend})"
        if kind == "mode" and value in MODES:
            old, self.mode = self.mode, Mode(value)
            self.mode_override = self.mode
            self.audit("mode", who, old, value, source="shared")
            if self.mode is Mode.ENFORCE:
                self._bans_apply()
        elif kind in ("allow", "disallow"):
            try:
                changed = (
                    self.engine.allow(value, share=False)
                    if kind == "allow"
                    else self.engine.disallow(value, share=False)
                )
            except ValueError as e:
                logger.error("ignoring a shared allowlist entry %r: %s", value, e)
                return
            if changed:
                self.audit(kind, who, None, value, source="shared")
        elif kind == "ban":  # another instance's ban, now in this one's table
            self._bans_apply()
            return
        elif kind in ("degraded", "recovered"):
            doc = event_document(f"state.{kind}", "configuration", self.clock(), state=self.store.stats())
            self.emit_document(doc)
            return
        else:
            return
        self.persist()

    def _follow_config_mode(self, new: Config, who: str) -> str | None:
        """After a reload: the config's `mode:` applies unless an operator chose the mode;
        then a warning says which mode stays and why."""
        if self.mode_override is None:
            if new.mode != self.mode:
                old, self.mode = self.mode, new.mode
                self.audit("mode", who, old, new.mode, source="config")
                if self.mode is Mode.ENFORCE:
                    self._bans_apply()
            return None
        if new.mode != self.mode_override:
            return (
                f"mode: the config says {new.mode}, but {self.mode_override} was set with "
                f"`proxylog ctl mode` or --enforce and stays; `proxylog ctl mode {new.mode}` to change it"
            )
        return None

    def restore(self) -> None:
        """Reinstate the persisted mode and bans (at start-up, before serving)."""
        if self.state is None:
            return
        saved = self.state.load()
        if saved.get("mode") in MODES:
            if saved["mode"] != self.mode:
                logger.warning(
                    "mode %s restored from %s, set with `proxylog ctl mode` (the config says %s)",
                    saved["mode"],
                    self.state.path,
                    self.mode,
                )
            self.mode = self.mode_override = Mode(saved["mode"])
        self.engine.restore_bans(self.state.bans(saved))
        for cidr in saved.get("allow", []):
            try:
                self.engine.allow(cidr)
            except ValueError as e:
                logger.error("ignoring persisted allowlist entry %r: %s", cidr, e)

    def persist(self) -> None:
        """Save mode, bans and runtime allowlist entries to the state file: the snapshot is
        taken now, the write (small, atomic, fsynced) happens in order on the state thread,
        so a slow disk never holds up requests. `saved()` waits for it."""
        if self.state is None:
            return
        bans = self.engine.bans()
        configured = {str(net) for net in self.config.rules.allow}
        allow = [cidr for cidr in self.engine.allowlist() if cidr not in configured]
        self._saved_bans = bans
        if self._state_writer is None:
            self._state_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proxylog-state")
        self._last_save = self._state_writer.submit(
            self._write_state, self.state, self.mode_override, bans, allow
        )

    def _write_state(
        self, state: StateFile, mode: str | None, bans: list[Any], allow: list[str]
    ) -> str | None:
        """On the state thread: write, or log why not and have upkeep try again."""
        try:
            state.save(mode, bans, allow)
        except OSError as e:
            self._saved_bans = None  # upkeep retries within 10 s
            logger.error("cannot persist state to %s: %s", state.path, e)
            return f"cannot persist state to {state.path}: {e.strerror or e}"
        return None

    async def saved(self) -> str | None:
        """Wait until every state write requested so far is done; the last one's error, if
        it failed (the change is live, but would not survive a restart yet)."""
        if self._last_save is None:
            return None
        return await asyncio.wrap_future(self._last_save)

    async def reload(self, who: str, source: str | None = None) -> ReloadResult:
        """Re-read the config file (`source`: another file from now on), validate it whole and
        swap it in, keeping the rule state, the operator's mode and the sinks that did not
        change; a bad file keeps the old config running. Audited either way; never raises.
        The one reload path: SIGHUP, `ctl reload`, the file watch and mitmdump's
        `proxylog_config` option all come here."""
        try:
            async with self._reload_lock:  # one at a time: a later file never loses to an earlier
                return await self._reload(who, source or self.config.source)
        except Exception as e:  # a bug: the old config keeps serving, and the caller hears why
            self.internal_errors += 1
            logger.exception("reload failed unexpectedly")
            error = ConfigError("", f"reload failed: {type(e).__name__}: {e}")
            return self._reload_failed(who, self.config.source or "", error)

    async def _reload(self, who: str, source: str | None) -> ReloadResult:
        if source is None:
            return ReloadResult(False, "no config file to reload (started without --config)")
        try:
            new = await asyncio.to_thread(load_config, source)
            if self.flags is not None:
                new = self.flags(new)
            for validate in self.hooks.validate:
                validate(new)
        except ConfigError as e:
            return self._reload_failed(who, source, e)
        warnings = tuple(
            f"{key} changed: restart proxylog to apply it"
            for key in RESTART_KEYS
            if getattr(new, key) != getattr(self.config, key)
        )
        new = replace(new, **{key: getattr(self.config, key) for key in RESTART_KEYS})
        # Everything that can fail (secrets, intel files, sink set-up) happens before the swap.
        try:
            started = self._new_sink_workers(new)
        except ConfigError as e:
            return self._reload_failed(who, source, e)
        try:
            self._compile(new, previous=self.engine)  # all or nothing: attributes swap at the end
        except ConfigError as e:
            for worker in started.values():
                worker.discard()
            return self._reload_failed(who, source, e)
        # No await until every part is swapped: each request sees the old config or the new.
        drain, self.config = self.config.timeouts.drain, new
        for apply in self.hooks.apply:
            apply(new)
        if mode_warning := self._follow_config_mode(new, who):
            warnings += (mode_warning,)
        replaced = self._route_sinks(new, started)
        stranded = await self._retire_sinks(replaced, started, drain)
        warnings += tuple(
            f"sink {name} was removed with {count} records left in its spool {path}: "
            "they are delivered when a sink of that name returns"
            for name, count, path in stranded
        )
        self.metrics.reloads["ok"] += 1
        extra: dict[str, Any] = {"warnings": list(warnings)}
        if stranded:
            extra["stranded"] = [{"sink": n, "records": c, "spool": p} for n, c, p in stranded]
        self.audit("reload", who, source, source, ok=True, **extra)
        for warning in warnings:
            logger.warning("reload: %s", warning)
        return ReloadResult(True, warnings=warnings, source=source)

    def _clean_text(self, text: str) -> str:
        """Free text (an error quoting a collector's reply or a config line) as the current
        Redactor would log it."""
        return self.redactor.clean_text(text)

    def _anonymize_client(self, ip: str) -> str:
        """A client address as the current Redactor writes it into records."""
        return self.redactor.anonymize_ip(ip) if self.redactor.spec.anonymize_ip else ip

    def _reload_failed(self, who: str, source: str, error: ConfigError) -> ReloadResult:
        self.metrics.reloads["failed"] += 1
        self.audit("reload", who, source, None, ok=False, error=self._clean_text(str(error)))
        if self.alerts is not None:
            self.alerts.notify("config_reload_failed", "config", source, error=str(error))
        logger.error("reload of %s failed, keeping the running config: %s", source, error)
        return ReloadResult(False, str(error), source=source)

    def _new_sink_workers(self, new: Config) -> dict[SinkSpec, SinkWorker]:
        """Workers, not yet started, for the sink specs of `new` that are not running now.
        Raises ConfigError (an unreadable token file, …) having built nothing."""
        running = {worker.spec for worker in self.workers}
        built: dict[SinkSpec, SinkWorker] = {}
        try:
            for spec in new.sinks:
                if spec not in running and spec not in built:
                    built[spec] = SinkWorker(
                        build_sink(spec), spec, state_dir=new.state_dir, clean=self._clean_text
                    )
        except ConfigError:
            for worker in built.values():
                worker.discard()
            raise
        return built

    def _route_sinks(self, new: Config, built: dict[SinkSpec, SinkWorker]) -> list[SinkWorker]:
        """Route records to the sinks of `new` at once: workers whose spec is unchanged stay
        (their queues survive), new ones queue until `_retire_sinks` starts them. Returns the
        workers replaced or removed."""
        current = {worker.spec: worker for worker in self.workers}
        self.workers = [current.pop(spec) if spec in current else built[spec] for spec in new.sinks]
        return list(current.values())

    async def _retire_sinks(
        self, replaced: list[SinkWorker], built: dict[SinkSpec, SinkWorker], timeout: float
    ) -> list[tuple[str, int, str | None]]:
        """Flush and close the replaced workers, then start the new ones, so two workers never
        write one file or stream at the same time. Returns (name, records, spool) for removed
        sinks that left records in their spool."""
        await asyncio.gather(*(old.close(timeout) for old in replaced))
        for worker in built.values():
            worker.start()
        names = {worker.name for worker in self.workers}
        stranded = []
        for old in replaced:
            if old.name not in names and old.backlog:
                path = old.snapshot()["spool_path"]
                logger.error(
                    "sink %s was removed with %d records left in its spool %s", old.name, old.backlog, path
                )
                stranded.append((old.name, old.backlog, path))
        return stranded

    def _bans_apply(self) -> None:
        """A ban was imposed, here or on another instance, or enforce mode began: the planes
        close the open connections of every client an enforced ban now covers."""
        for banned in self.hooks.banned:
            banned()

    def ban_enforced(self, ip: str) -> bool:
        """Whether a request from `ip` would now be refused by an enforced ban."""
        return self.engine.ban_enforced(ip, self.mode)

    def reopen(self) -> None:
        """Ask every sink to reopen its files (SIGHUP, after an external logrotate)."""
        for worker in self.workers:
            worker.reopen()

    def _on_rule_event(self, event: RuleEvent) -> None:
        if event.kind != "rule_fired":
            self._emit_ban(event)
        if event.kind == "ban":
            self._bans_apply()
        # Alert on what needs a human: a rule first firing for a key, and bans; a ban's end
        # resolves its alert on channels that send resolves.
        alerts = self.alerts
        if alerts is None:
            return
        if event.kind == "unban":
            alerts.resolve("ban", event.rule, event.key, until=event.until)
            return
        rule = self._rule_specs.get(event.rule)  # None for a manual ban
        mode = (rule.mode if rule is not None else None) or self.mode
        blocks = rule is None or rule.action == "block"
        alerts.notify(
            event.kind,
            event.rule,
            event.key,
            count=event.count if event.threshold else None,
            threshold=event.threshold or None,
            window_s=rule.window if rule is not None else None,
            mode=str(mode),
            enforced=blocks and mode == Mode.ENFORCE,
            until=event.until,
        )

    def _emit_ban(self, event: RuleEvent) -> None:
        """A ban imposed or ended, into the stream of every sink (alerts or not)."""
        key = self._anonymize_client(event.key)
        if event.kind == "ban":
            self.metrics.bans["created"] += 1
            extra = {"count": event.count, "threshold": event.threshold} if event.threshold else {}
            doc = ban_document("ban", key, event.rule, event.ts, since=event.ts, until=event.until, **extra)
        else:
            ended = "expired" if event.until is not None and event.ts >= event.until else "lifted"
            self.metrics.bans[ended] += 1
            doc = ban_document("unban", key, event.rule, event.ts, until=event.until, ended=ended)
        self.emit_document(doc)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sink workers and the background upkeep on the running loop."""
        for worker in self.workers:
            worker.start()
        self.store.start()
        self._started = True
        if self.alerts is not None:
            self.alerts.start()
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._upkeep(), name="proxylog upkeep")]

    async def _upkeep(self) -> None:
        while True:
            await asyncio.sleep(self.upkeep_interval)
            await self.tick()

    async def tick(self) -> None:
        """One upkeep step (every `upkeep_interval` s; tests call it instead of sleeping):
        give freed heap memory back to the system (off the loop), alert on sinks turning
        unhealthy; every `upkeep_every` steps, persist changed bans and refresh threat-intel
        files (off the loop). Never raises."""
        self._ticks += 1
        try:
            if MALLOC_TRIM is not None:
                await asyncio.to_thread(MALLOC_TRIM, 0)
            self._watch_sinks()
            if self.alerts is not None:
                self.alerts.tick()
            if self._ticks % self.upkeep_every == 0:
                if self.engine.bans() != self._saved_bans:
                    self.persist()
                await asyncio.to_thread(self.engine.refresh)
        except Exception:
            self.internal_errors += 1
            logger.exception("runtime upkeep failed")

    def sighup(self) -> None:
        """SIGHUP: reopen the sinks' files (after an external logrotate) and reload the config
        file (a bad one keeps the old config). The reload task is owned and awaited on close."""
        logger.warning("SIGHUP received: reloading the config and reopening sink files")
        self.reopen()
        if self.config.source is not None:
            task = asyncio.get_running_loop().create_task(self._reload_task("SIGHUP"))
            self._tasks.append(task)
            task.add_done_callback(self._forget)

    async def _reload_task(self, who: str) -> None:
        await self.reload(who)

    def _forget(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def _watch_sinks(self) -> None:
        for worker in self.workers:
            was = self._sink_health.get(worker.name, True)
            now = worker.stats.healthy
            if was != now and self.alerts is not None:
                if now:
                    self.alerts.resolve("sink_failure", "sink", worker.name)
                else:
                    self.alerts.notify("sink_failure", "sink", worker.name, error=worker.stats.last_error)
            self._sink_health[worker.name] = now

    async def flush(self, timeout: float) -> bool:
        results = await asyncio.gather(*(w.flush(timeout) for w in self.workers))
        return all(results)

    async def close(self, timeout: float = 10.0) -> int:
        """Persist state, flush every sink for up to `timeout` seconds and close them; returns
        the records lost. A reload in progress finishes first (its replaced sinks close)."""
        async with self._reload_lock:
            return await self._close(timeout)

    async def _close(self, timeout: float) -> int:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.persist()
        await self.saved()
        await self.store.close()
        if self._state_writer is not None:
            self._state_writer.shutdown(wait=False)
            self._state_writer = None
        if self.alerts is not None:
            await self.alerts.aclose(timeout)
        lost = await asyncio.gather(*(w.close(timeout) for w in self.workers))
        return sum(lost)


@dataclass(frozen=True, slots=True)
class Parts:
    """What a request needs, compiled from one config."""

    trusted: TrustedProxies
    redactor: Redactor
    body_parser: BodyParser | None
    engine: RuleEngine


def compile_parts(
    config: Config,
    clock: Callable[[], float] = time.time,
    previous: RuleEngine | None = None,
    listener: Callable[[RuleEvent], None] | None = None,
    *,
    store: Store | None = None,
) -> Parts:
    """The one compile step, used by `serve` (and every reload) and by `check`: trusted
    proxies, the redactor (patterns compiled together), body capture and the rule engine
    (intel files read). Raises ConfigError."""
    return Parts(
        TrustedProxies(config.trusted_proxies),
        Redactor(config.redact),
        build_body_parser(config.redact),
        RuleEngine(config.rules, clock, previous=previous, listener=listener, store=store),
    )


def check_config(config: Config) -> None:
    """Everything `serve` builds from a config, short of binding sockets or starting threads:
    the compiled parts, every sink constructed and closed again, the control and alert
    secrets read. Raises ConfigError naming the key."""
    compile_parts(config)
    for spec in config.sinks:
        build_sink(spec).close()
    if config.control.tcp is not None:
        read_secret(config.control.token_file, config.control.token_env, "control")
    if config.state.password_file or config.state.password_env:
        read_secret(
            config.state.password_file,
            config.state.password_env,
            "state",
            file_key="password_file",
            env_key="password_env",
        )
    if config.alerts:
        AlertDispatcher(config.alerts, lambda document: None).close()  # reads every channel's secret


def _address(url: str) -> tuple[str, int]:
    """(host, port) of a URL, the port defaulting by scheme."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
