"""Alerts: rule firings, bans, sink failures and failed reloads, as events in the log stream
and as webhook calls (generic JSON or Slack-compatible).

`notify` runs on the event loop and is O(1): it deduplicates per (kind, rule, key) with each
webhook's cooldown, writes the alert event to the sinks, and queues it. Each webhook has a
daemon thread that groups what arrives within `group` seconds into one POST and retries with
backoff. Alerts carry only what the engine knows (kind, rule id, key, counts, the error
text of a failed reload or sink, redacted like any log line), never request data.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any

import orjson
from cachetools import TTLCache

from proxylog.config import AlertSpec
from proxylog.config.secrets import read_secret
from proxylog.record import event_document

logger = logging.getLogger("proxylog.alerts")

QUEUE_LIMIT = 1000
ATTEMPTS = 3
DEDUPE_KEYS = 10_000


class AlertDispatcher:
    """Deduplicates, logs and fans alerts out to the configured webhooks."""

    def __init__(
        self,
        specs: tuple[AlertSpec, ...],
        emit_document: Callable[[dict[str, Any]], None],
        *,
        clock: Callable[[], float] = time.time,
        clean: Callable[[str], str] = str,
    ) -> None:
        """`clean` redacts free text (an error message quoting a collector's reply) before an
        alert carries it anywhere."""
        self.specs = specs
        self.sent = self.failed = self.suppressed = 0
        self._emit = emit_document
        self._clock = clock
        self._clean = clean
        self._hooks = [_Webhook(spec, self, f"alerts[{index}]", clock) for index, spec in enumerate(specs)]

    def notify(self, kind: str, rule: str, key: str, **context: Any) -> None:
        """Raise an alert unless every webhook saw the same (kind, rule, key) within its cooldown."""
        now = self._clock()
        alert = {"kind": kind, "rule": rule, "key": key, "ts": now}
        alert.update(
            (name, self._clean(value) if isinstance(value, str) else value)
            for name, value in context.items()
            if value is not None
        )
        accepted = [hook for hook in self._hooks if hook.accept(alert)]
        if not accepted:
            self.suppressed += 1
            return
        self._emit(event_document("alert", "intrusion_detection", now, alert=alert))
        for hook in accepted:
            hook.enqueue(alert)

    def close(self) -> None:
        for hook in self._hooks:
            hook.close()


class _Webhook:
    """One webhook: its dedupe cache, its queue and the thread that posts grouped alerts."""

    def __init__(
        self, spec: AlertSpec, owner: AlertDispatcher, where: str, clock: Callable[[], float]
    ) -> None:
        self.spec = spec
        self.owner = owner
        self.token = (
            read_secret(spec.token_file, spec.token_env, where)
            if (spec.token_file or spec.token_env)
            else None
        )
        self.url = urllib.parse.urlsplit(spec.url)
        self._seen: TTLCache[tuple[str, str, str], float] = TTLCache(
            maxsize=DEDUPE_KEYS, ttl=max(spec.cooldown, 0.001), timer=clock
        )
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name=f"proxylog-alerts-{self.url.hostname}", daemon=True
        )
        self._thread.start()

    def accept(self, alert: dict[str, Any]) -> bool:
        key = (alert["kind"], alert["rule"], alert["key"])
        if self.spec.cooldown > 0 and key in self._seen:
            return False
        self._seen[key] = alert["ts"]
        return True

    def enqueue(self, alert: dict[str, Any]) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self.owner.failed += 1
            return
        self._queue.append(alert)
        self._wakeup.set()

    def close(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    def _main(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.wait()
            self._wakeup.clear()
            if self._stopping.wait(self.spec.group):  # group what arrives meanwhile
                break
            batch = [self._queue.popleft() for _ in range(len(self._queue))]
            if batch:
                self._deliver(batch)
        if self._queue:  # closed (shutdown, or a reload replaced this webhook) with alerts queued
            self.owner.failed += len(self._queue)
            logger.error(
                "alert webhook %s: %d alerts not delivered: closed", self.url.hostname, len(self._queue)
            )
            self._queue.clear()

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        body = orjson.dumps(self._payload(batch))
        delay = 1.0
        for attempt in range(1, ATTEMPTS + 1):
            try:
                status = self._post(body)
                if 200 <= status < 300:
                    self.owner.sent += len(batch)
                    return
                error = f"HTTP {status}"
                if 400 <= status < 500 and status != 429:
                    break  # the receiver refuses this payload; retrying will not help
            except (OSError, HTTPException) as e:
                error = str(e) or type(e).__name__
            logger.warning(
                "alert webhook %s failed (attempt %d/%d): %s", self.url.hostname, attempt, ATTEMPTS, error
            )
            if attempt < ATTEMPTS and self._stopping.wait(delay):
                break
            delay *= 2
        self.owner.failed += len(batch)
        logger.error("alert webhook %s: %d alerts not delivered: %s", self.url.hostname, len(batch), error)

    def _payload(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        if self.spec.type == "slack":
            lines = [f"• {a['kind']} {a['rule']} {a['key']}" + _details(a) for a in batch]
            return {
                "text": f"proxylog: {len(batch)} alert{'s' if len(batch) > 1 else ''}\n" + "\n".join(lines)
            }
        return {"source": "proxylog", "alerts": batch}

    def _post(self, body: bytes) -> int:
        url = self.url
        connection = HTTPSConnection if url.scheme == "https" else HTTPConnection
        conn = connection(url.hostname or "", url.port, timeout=self.spec.timeout)
        headers = {"Content-Type": "application/json", "User-Agent": "proxylog-alerts"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            path = url.path or "/"
            conn.request("POST", f"{path}?{url.query}" if url.query else path, body, headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()


def _details(alert: dict[str, Any]) -> str:
    parts = []
    if alert.get("threshold"):
        parts.append(f"{alert.get('count')}/{alert['threshold']}")
    if alert.get("until"):
        parts.append("until " + time.strftime("%H:%M:%S", time.gmtime(alert["until"])) + "Z")
    if alert.get("error"):
        parts.append(str(alert["error"]))
    return f" ({', '.join(parts)})" if parts else ""
