"""PagerDuty Events API v2: one event per alert. A trigger's `dedup_key` comes from (kind,
rule, key), so repeats update one incident and the resolve (a ban ended, a sink recovered)
closes it; conditions of one host (a sink, a reload) add the host to the key, so two hosts'
failing sinks stay two incidents."""

from __future__ import annotations

import hashlib
import urllib.parse
from typing import Any

import orjson

from proxylog.alerts.channel import Channel, Message, Owner
from proxylog.alerts.model import Alert, details, subject
from proxylog.alerts.webhook import post_json
from proxylog.config.alerts import PagerDutyAlertSpec
from proxylog.config.secrets import read_secret
from proxylog.record import format_timestamp

HOST_KINDS = frozenset({"sink_failure", "config_reload_failed"})
MAX_SUMMARY = 1024  # the API's limit
MAX_DEDUP_KEY = 255


def dedup_key(alert: Alert) -> str:
    """``proxylog/ban/probing/203.0.113.7`` (plus ``@host`` for one host's conditions); a key
    past the API's 255 characters becomes its digest."""
    key = f"proxylog/{alert.kind}/{alert.rule}/{alert.key}"
    if alert.kind in HOST_KINDS:
        key += f"@{alert.host}"
    if len(key) > MAX_DEDUP_KEY:
        key = f"proxylog/{alert.kind}/sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return key


class PagerDutyChannel(Channel):
    """``type: pagerduty``."""

    spec: PagerDutyAlertSpec

    def __init__(self, spec: PagerDutyAlertSpec, owner: Owner, where: str) -> None:
        self.routing_key = read_secret(
            spec.routing_key_file,
            spec.routing_key_env,
            where,
            file_key="routing_key_file",
            env_key="routing_key_env",
        )
        super().__init__(spec, owner)
        self.url = urllib.parse.urlsplit(spec.url)
        self.severity: dict[str, str] = dict(spec.severity)

    def messages(self, batch: list[Alert]) -> list[Message]:
        return [Message((alert,), orjson.dumps(self.event(alert))) for alert in batch]

    def event(self, alert: Alert) -> dict[str, Any]:
        """The Events API v2 body for one alert."""
        event: dict[str, Any] = {
            "routing_key": self.routing_key,
            "event_action": alert.action,
            "dedup_key": dedup_key(alert),
        }
        if alert.action == "resolve":
            return event
        custom = {"kind": alert.kind, "rule": alert.rule, "key": alert.key}
        custom.update(details(alert))
        event["payload"] = {
            "summary": subject([alert])[:MAX_SUMMARY],
            "source": alert.host,
            "severity": self.severity.get(alert.kind, "error"),
            "timestamp": format_timestamp(alert.ts),
            "component": "proxylog",
            "group": alert.rule,
            "class": alert.kind,
            "custom_details": custom,
        }
        event["client"] = f"proxylog {alert.version}"
        return event

    def send(self, message: Message) -> None:
        post_json(self.url, message.payload, {}, self.spec.timeout)
