"""What every alert channel shares: cooldown, grouping, the worker thread, retry with backoff,
open incidents for resolves, and exact accounting of what was sent, retried and dropped.

The event loop only calls `accept`, `enqueue`, `resolve` and `expired`: O(1) (`expired` is
O(open incidents), once per upkeep tick), never blocking, never raising. A channel's thread
starts in `start`, never in the constructor; it sleeps until alerts arrive, waits `group`
seconds for more, and sends what it holds as the channel's messages. A message that still
fails after `attempts` tries, or that the receiver refuses, is dropped, counted, logged and
reported as an ``alerts_dropped`` event in the record stream: no alert is lost silently.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cachetools import TTLCache

from proxylog.alerts.model import Alert
from proxylog.config.alerts import AlertSpec
from proxylog.record import event_document

logger = logging.getLogger("proxylog.alerts")

QUEUE_LIMIT = 1000
DEDUPE_KEYS = 10_000
MAX_OPEN = 10_000
REFRESHED = 100  # alerts per batch whose evidence is read again at delivery


class DeliveryError(Exception):
    """A message did not get through and may on a later try (connection refused, timeout, 5xx)."""


class Refused(DeliveryError):
    """The receiver refused the message (4xx, 5xx SMTP reply, bad credentials, no STARTTLS):
    trying again would not help, so it is dropped at once."""


class Owner(Protocol):
    """What a channel needs from its dispatcher; `report` and `refresh` are called from the
    channel's thread."""

    clock: Callable[[], float]

    def clean(self, text: str) -> str: ...

    def report(self, document: dict[str, Any]) -> None: ...

    def refresh(self, alert: Alert) -> Alert: ...


@dataclass(frozen=True, slots=True)
class Message:
    """What one send delivers: the alerts it carries and the channel's payload for them."""

    alerts: tuple[Alert, ...]
    payload: Any


@dataclass(slots=True)
class ChannelStats:
    """Alerts `sent`, message `retried` attempts, alerts `failed` after their last attempt or
    `overflowed` a full queue (both count as dropped), and duplicates `suppressed` by the cooldown."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    overflowed: int = 0
    suppressed: int = 0

    @property
    def dropped(self) -> int:
        return self.failed + self.overflowed


class Channel:
    """One configured channel; subclasses say how a batch becomes messages and how one is sent."""

    def __init__(self, spec: AlertSpec, owner: Owner) -> None:
        """Subclasses read their secrets first: a ConfigError then leaves nothing running."""
        self.spec = spec
        self.owner = owner
        self.stats = ChannelStats()
        self._seen: TTLCache[tuple[str, str, str], float] = TTLCache(
            maxsize=DEDUPE_KEYS, ttl=max(spec.cooldown, 0.001), timer=owner.clock
        )
        # Triggers sent and not yet resolved (a ban's slot holds its end), for `resolve: true`.
        self._open: collections.OrderedDict[tuple[str, str, str], float | None] = collections.OrderedDict()
        self._queue: collections.deque[Alert] = collections.deque()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported_overflow = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def where(self) -> str:
        """How log lines name this channel (never a URL: a Slack webhook's path is its secret)."""
        return f"alert channel {self.spec.name}"

    # -- on the event loop ------------------------------------------------------------------

    def accept(self, alert: Alert) -> bool:
        """Whether this channel takes a trigger: not when the same (kind, rule, key) was taken
        within the cooldown (counted as suppressed)."""
        slot = alert.slot
        if self.spec.cooldown > 0 and slot in self._seen:
            self.stats.suppressed += 1
            return False
        self._seen[slot] = alert.ts
        if self.spec.resolve:
            self._open.pop(slot, None)
            self._open[slot] = alert.until
            if len(self._open) > MAX_OPEN:
                self._open.popitem(last=False)
        return True

    def resolve(self, slot: tuple[str, str, str]) -> bool:
        """Whether this channel sends the end of `slot`: only with `resolve: true` and a trigger
        it sent. The cooldown forgets the slot, so the next trigger is sent again."""
        if not self.spec.resolve or slot not in self._open:
            return False
        del self._open[slot]
        self._seen.pop(slot, None)
        return True

    def expired(self, now: float) -> list[tuple[str, str, str]]:
        """Open ban incidents whose ban has run out by `now`."""
        return [slot for slot, until in self._open.items() if until is not None and until <= now]

    def enqueue(self, alert: Alert) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self.stats.overflowed += 1  # reported by the thread, in one event per burst
        else:
            self._queue.append(alert)
        self._wakeup.set()

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None and not self._stopping.is_set():
            self._thread = threading.Thread(target=self._main, name=f"proxylog-{self.name}", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop grouping and send what is queued, one try each, then end the thread; alerts
        that still fail are dropped (counted, reported). Never blocks: see `join`."""
        self._stopping.set()
        self._wakeup.set()
        if self._thread is None:  # never started: nothing will send what is queued
            batch = self._take()
            if batch:
                self._drop(batch, "closed before it was started")

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the thread to end (blocking); True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- on the channel's thread ------------------------------------------------------------

    def messages(self, batch: list[Alert]) -> list[Message]:
        """The messages that carry `batch` (one grouped message, or one per alert)."""
        raise NotImplementedError

    def send(self, message: Message) -> None:
        """Deliver one message (blocking, bounded by the spec's timeout); raises Refused,
        DeliveryError or OSError."""
        raise NotImplementedError

    def _take(self) -> list[Alert]:
        return [self._queue.popleft() for _ in range(len(self._queue))]

    def _main(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            if not self._stopping.is_set():
                self._stopping.wait(self.spec.group)  # group what arrives meanwhile
            closing = self._stopping.is_set()
            batch = self._take()
            if batch:
                try:
                    self._deliver(batch, attempts=1 if closing else self.spec.attempts)
                except Exception as e:  # a bug: account for the batch, keep the thread alive
                    logger.exception("%s: delivery failed unexpectedly", self.where)
                    self._drop(batch, f"internal error: {type(e).__name__}")
            self._report_overflow()
            if closing and not self._queue:
                return

    def _deliver(self, batch: list[Alert], attempts: int) -> None:
        # The evidence is read again for the alerts told in full (the rest keep what they had).
        batch = [self.owner.refresh(a) for a in batch[:REFRESHED]] + batch[REFRESHED:]
        for message in self.messages(batch):
            self._send(message, attempts)

    def _send(self, message: Message, attempts: int) -> None:
        delay = self.spec.backoff
        attempt = 0
        while True:
            attempt += 1
            try:
                self.send(message)
            except Refused as e:
                self._drop(list(message.alerts), _describe(e))
                return
            except (DeliveryError, OSError) as e:
                error = _describe(e)
            else:
                self.stats.sent += len(message.alerts)
                return
            if attempt >= attempts:
                self._drop(list(message.alerts), error)
                return
            logger.warning(
                "%s failed (attempt %d/%d), retrying in %gs: %s",
                self.where,
                attempt,
                attempts,
                delay,
                self.owner.clean(error),
            )
            self.stats.retried += 1
            if self._stopping.wait(delay):
                attempts = attempt + 1  # closing: one last try, no more waiting
            delay *= 2

    def _drop(self, alerts: list[Alert], error: str) -> None:
        error = self.owner.clean(error)
        self.stats.failed += len(alerts)
        logger.error("%s: %d alert(s) not delivered: %s", self.where, len(alerts), error)
        self._report(len(alerts), error, alerts)

    def _report_overflow(self) -> None:
        overflowed = self.stats.overflowed
        if overflowed != self._reported_overflow:
            count, self._reported_overflow = overflowed - self._reported_overflow, overflowed
            logger.error("%s: %d alert(s) dropped: its queue of %d was full", self.where, count, QUEUE_LIMIT)
            self._report(count, f"queue full ({QUEUE_LIMIT} alerts waiting)", [])

    def _report(self, count: int, error: str, alerts: list[Alert]) -> None:
        dropped = {
            "channel": self.name,
            "type": self.spec.type,
            "count": count,
            "error": error,
            "alerts": [{"kind": a.kind, "rule": a.rule, "key": a.key, "action": a.action} for a in alerts],
        }
        self.owner.report(
            event_document(
                "alerts_dropped", "intrusion_detection", self.owner.clock(), alerts_dropped=dropped
            )
        )


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__
