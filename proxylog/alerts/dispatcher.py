"""The dispatcher: turns what the runtime reports (rule events, bans, sink failures, failed
reloads, and their ends) into alerts with context, writes each to the record stream, and
hands it to every channel whose cooldown lets it through.

Everything here runs on the event loop and is O(channels) per alert; sending happens on the
channels' threads, started in `start`. A reload builds a new dispatcher with `previous`: the
channels whose spec did not change carry over (queue, cooldown, open incidents, counters).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import proxylog
from proxylog.alerts.channel import Channel
from proxylog.alerts.evidence import Evidence
from proxylog.alerts.model import Alert
from proxylog.alerts.pagerduty import PagerDutyChannel
from proxylog.alerts.smtp import EmailChannel
from proxylog.alerts.webhook import WebhookChannel
from proxylog.config.alerts import AlertSpec, EmailAlertSpec, PagerDutyAlertSpec, WebhookAlertSpec
from proxylog.record import event_document

logger = logging.getLogger("proxylog.alerts")

CLIENT_KINDS = frozenset({"rule_fired", "ban"})  # alerts whose key is a client (or its network)


class _Shared:
    """What the channels use of their dispatcher, kept across reloads with the channels."""

    def __init__(
        self,
        emit: Callable[[dict[str, Any]], None],
        clock: Callable[[], float],
        clean: Callable[[str], str],
        anonymize: Callable[[str], str],
    ) -> None:
        self.emit = emit
        self.clock = clock
        self._clean = clean
        self.anonymize = anonymize
        self.evidence = Evidence()
        self.loop: asyncio.AbstractEventLoop | None = None

    def clean(self, text: str) -> str:
        return self._clean(text)

    def report(self, document: dict[str, Any]) -> None:
        """Put an event into the record stream from any thread (via the loop once started)."""
        loop = self.loop
        if loop is None:
            self.emit(document)
            return
        try:
            loop.call_soon_threadsafe(self.emit, document)
        except RuntimeError:  # the loop is closed: proxylog is exiting
            logger.error("alert event not recorded (shutting down): %s", document["event"]["action"])

    def refresh(self, alert: Alert) -> Alert:
        """The alert with what was seen of its client up to now (on a channel's thread: the
        requests that arrived while the alert was grouped count too)."""
        if alert.action != "trigger" or alert.kind not in CLIENT_KINDS:
            return alert
        seen = self.evidence.summary(alert.key)
        return alert if seen is None else replace(alert, seen=seen)


# spec class -> channel class: a new channel type is a Channel subclass, its spec, one line here.
CHANNELS: dict[type[AlertSpec], Callable[[Any, _Shared, str], Channel]] = {
    WebhookAlertSpec: WebhookChannel,
    EmailAlertSpec: EmailChannel,
    PagerDutyAlertSpec: PagerDutyChannel,
}


def build_channel(spec: AlertSpec, owner: _Shared, where: str) -> Channel:
    """The channel for one spec; raises ConfigError (naming `where`) for a secret it cannot read."""
    return CHANNELS[type(spec)](spec, owner, where)


class AlertDispatcher:
    """Deduplicates, records and fans alerts out to the configured channels. The constructor
    reads the channels' secrets (raising ConfigError) and starts nothing: `start` does."""

    _shared: _Shared

    def __init__(
        self,
        specs: tuple[AlertSpec, ...],
        emit_document: Callable[[dict[str, Any]], None],
        *,
        clock: Callable[[], float] = time.time,
        clean: Callable[[str], str] = str,
        anonymize: Callable[[str], str] = str,
        previous: AlertDispatcher | None = None,
        host: str | None = None,
    ) -> None:
        """`clean` redacts free text (an error quoting a collector's reply) before an alert
        carries it anywhere; `anonymize` turns a client key into what records show of it
        (`redact.anonymize_ip`: its /24 or /48), so no channel gets more than a sink;
        `previous` lends its unchanged channels (it is not changed: the caller closes it with
        `close(keep=…)` once this one is in use)."""
        self.specs = specs
        self.host: str = host or (previous.host if previous is not None else socket.gethostname())
        self.suppressed: int = previous.suppressed if previous is not None else 0
        shared: _Shared = (
            previous._shared if previous is not None else _Shared(emit_document, clock, clean, anonymize)
        )
        kept: dict[AlertSpec, Channel] = {}
        if previous is not None:
            kept = {channel.spec: channel for channel in previous.channels}
        self.channels: list[Channel] = [
            kept.get(spec) or build_channel(spec, shared, f"alerts[{index}]")
            for index, spec in enumerate(specs)
        ]
        shared.emit, shared.clock, shared._clean, shared.anonymize = emit_document, clock, clean, anonymize
        self._shared = shared

    @property
    def evidence(self) -> Evidence:
        return self._shared.evidence

    def witness(self, client_ip: str, path: str, ts: float) -> None:
        """Note one request (its path redacted) for the context of later alerts. O(1)."""
        self._shared.evidence.witness(client_ip, path, ts)

    def notify(self, kind: str, rule: str, key: str, **context: Any) -> None:
        """Raise an alert unless every channel saw the same (kind, rule, key) within its
        cooldown. `context` holds Alert fields (count, threshold, window_s, mode, enforced,
        until, error); text in it is redacted first."""
        shared = self._shared
        now = shared.clock()
        key = self._key(kind, key)
        fields: dict[str, Any] = {
            name: shared.clean(value) if isinstance(value, str) and name == "error" else value
            for name, value in context.items()
            if value is not None
        }
        alert = Alert(kind, rule, key, now, self.host, proxylog.__version__, **fields)
        if kind in CLIENT_KINDS:
            seen = shared.evidence.summary(key, networks=False)  # a network's scan waits for the thread
            if seen is not None:
                alert = replace(alert, seen=seen)
        accepted = [channel for channel in self.channels if channel.accept(alert)]
        if not accepted:
            self.suppressed += 1
            return
        shared.emit(event_document("alert", "intrusion_detection", now, alert=alert.to_dict()))
        for channel in accepted:
            channel.enqueue(alert)

    def resolve(self, kind: str, rule: str, key: str, **context: Any) -> None:
        """Send the end of (kind, rule, key) (a ban ended, a sink recovered) to the channels
        with `resolve: true` that sent its trigger; recorded in the stream when any does."""
        shared = self._shared
        now = shared.clock()
        key = self._key(kind, key)
        alert = Alert(kind, rule, key, now, self.host, proxylog.__version__, action="resolve", **context)
        accepted = [channel for channel in self.channels if channel.resolve(alert.slot)]
        if not accepted:
            return
        shared.emit(event_document("alert", "intrusion_detection", now, alert=alert.to_dict()))
        for channel in accepted:
            channel.enqueue(alert)

    def _key(self, kind: str, key: str) -> str:
        """A client key as the records show the client (anonymised or not); the evidence is
        kept under that same key, since it is fed from redacted records."""
        return self._shared.anonymize(key) if kind in CLIENT_KINDS else key

    def tick(self) -> None:
        """Resolve the ban incidents whose ban has run out (a ban that expires while no request
        arrives is announced by nobody else). Called by the runtime's upkeep."""
        now = self._shared.clock()
        ended = {slot for channel in self.channels if channel.spec.resolve for slot in channel.expired(now)}
        for kind, rule, key in sorted(ended):
            self.resolve(kind, rule, key)

    def start(self) -> None:
        """Start every channel's thread; events they report go through the running loop."""
        self._shared.loop = asyncio.get_running_loop()
        for channel in self.channels:
            channel.start()

    def close(self, keep: AlertDispatcher | None = None) -> None:
        """Close the channels (`keep`'s carry on): each sends what it has queued, one try,
        on its own thread. Never blocks."""
        kept = set(map(id, keep.channels)) if keep is not None else set()
        for channel in self.channels:
            if id(channel) not in kept:
                channel.close()

    async def aclose(self, timeout: float) -> None:
        """Close, and wait up to `timeout` s for the channels' last sends (at shutdown, so
        their drop events reach the sinks before those close)."""
        self.close()
        done = await asyncio.to_thread(self._join, timeout)
        for channel in self.channels:
            if not done.get(channel.name, True):
                logger.error("%s still sending at shutdown: its last alerts may be lost", channel.where)

    def _join(self, timeout: float) -> dict[str, bool]:
        deadline = time.monotonic() + timeout
        return {c.name: c.join(max(0.0, deadline - time.monotonic())) for c in self.channels}

    def snapshot(self) -> dict[str, Any]:
        """Counters for `ctl stats` and metrics: totals, and per channel what was sent,
        retried, dropped and suppressed, and what is queued."""
        channels: dict[str, dict[str, Any]] = {
            channel.name: {
                "type": channel.spec.type,
                "sent": channel.stats.sent,
                "retried": channel.stats.retried,
                "dropped": channel.stats.dropped,
                "suppressed": channel.stats.suppressed,
                "queued": channel.queued,
            }
            for channel in self.channels
        }
        totals = {name: sum(c[name] for c in channels.values()) for name in ("sent", "retried", "dropped")}
        return {**totals, "suppressed": self.suppressed, "channels": channels}
