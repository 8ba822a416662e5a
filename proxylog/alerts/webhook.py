"""Webhook channels: generic JSON (``{"source": "proxylog", "alerts": [...]}``) or a
Slack-compatible ``{"text": …}``, one POST per group of alerts; and the POST they share with
PagerDuty."""

from __future__ import annotations

import urllib.parse
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any

import orjson

from proxylog.alerts.channel import Channel, DeliveryError, Message, Owner, Refused
from proxylog.alerts.model import Alert, details, headline
from proxylog.config.alerts import WebhookAlertSpec
from proxylog.config.secrets import read_secret


def post_json(url: urllib.parse.SplitResult, body: bytes, headers: dict[str, str], timeout: float) -> bytes:
    """POST `body` and return the reply's body on 2xx (blocking, bounded by `timeout` per
    socket operation); raises Refused on a 4xx other than 408/429, DeliveryError otherwise.
    Errors name the status, never the URL (its path or query may be the secret)."""
    connection = HTTPSConnection if url.scheme == "https" else HTTPConnection
    conn = connection(url.hostname or "", url.port, timeout=timeout)
    try:
        path = url.path or "/"
        conn.request(
            "POST",
            f"{path}?{url.query}" if url.query else path,
            body,
            {"Content-Type": "application/json", "User-Agent": "proxylog-alerts", **headers},
        )
        response = conn.getresponse()
        reply = response.read(64 * 1024)
    except HTTPException as e:
        raise DeliveryError(f"bad reply: {type(e).__name__}") from e
    finally:
        conn.close()
    status = response.status
    if 200 <= status < 300:
        return reply
    text = f"HTTP {status}: {reply[:300].decode('utf-8', 'replace')}" if reply else f"HTTP {status}"
    if 400 <= status < 500 and status not in (408, 429):
        raise Refused(text)
    raise DeliveryError(text)


class WebhookChannel(Channel):
    """``type: webhook`` or ``type: slack``."""

    spec: WebhookAlertSpec

    def __init__(self, spec: WebhookAlertSpec, owner: Owner, where: str) -> None:
        self.token = None
        if spec.token_file or spec.token_env:
            self.token = read_secret(spec.token_file, spec.token_env, where)
        super().__init__(spec, owner)
        self.url = urllib.parse.urlsplit(spec.url)

    def messages(self, batch: list[Alert]) -> list[Message]:
        return [Message(tuple(batch), orjson.dumps(self._payload(batch)))]

    def _payload(self, batch: list[Alert]) -> dict[str, Any]:
        if self.spec.type == "slack":
            host = batch[0].host
            lines = [f"• {headline(a)}{_compact(a)}" for a in batch]
            count = f"{len(batch)} alert{'s' if len(batch) > 1 else ''}"
            return {"text": f"proxylog on {host}: {count}\n" + "\n".join(lines)}
        return {"source": "proxylog", "alerts": [alert.to_dict() for alert in batch]}

    def send(self, message: Message) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        post_json(self.url, message.payload, headers, self.spec.timeout)


def _compact(alert: Alert) -> str:
    """The details on one line, without the time and host (the message header has them)."""
    rows = [f"{label}: {text}" for label, text in details(alert) if label not in ("at", "host")]
    return f" ({'; '.join(rows)})" if rows else ""
