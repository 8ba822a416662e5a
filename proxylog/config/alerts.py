"""Alert channel specs, parsed from ``alerts:``: webhooks (generic JSON or Slack), email over
SMTP and PagerDuty Events API v2; one parser per channel type.

Secrets (a bearer token, an SMTP password, a PagerDuty routing key) are named by a file or an
environment variable, never given in the YAML. Every spec is frozen and hashable, so a reload
keeps the channels whose spec did not change (with their queues, cooldowns and open incidents).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from proxylog.config.reader import Fields, Node

AlertType = Literal["webhook", "slack", "email", "pagerduty"]
ALERT_TYPES: tuple[AlertType, ...] = get_args(AlertType)
AlertKind = Literal["rule_fired", "ban", "sink_failure", "config_reload_failed"]
ALERT_KINDS: tuple[AlertKind, ...] = get_args(AlertKind)
Severity = Literal["critical", "error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
SmtpTls = Literal["starttls", "tls", "none"]
SMTP_TLS: tuple[SmtpTls, ...] = get_args(SmtpTls)

PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
SMTP_PORTS: dict[SmtpTls, int] = {"starttls": 587, "tls": 465, "none": 25}
# What an on-call engineer should feel: a sink failing loses the audit trail (records spool,
# then drop), a reload failure leaves a config unapplied, a ban means an attack in progress.
DEFAULT_SEVERITY: tuple[tuple[AlertKind, Severity], ...] = (
    ("ban", "error"),
    ("config_reload_failed", "error"),
    ("rule_fired", "warning"),
    ("sink_failure", "critical"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertSpec:
    """What every alert channel has: a type, a unique name, one alert per (kind, rule, key)
    per `cooldown`, alerts within `group` seconds sent together, `attempts` tries per message
    with backoff doubling from `backoff`, and whether recoveries are sent (`resolve`)."""

    type: AlertType
    name: str
    cooldown: float = 300.0
    group: float = 5.0
    timeout: float = 5.0
    attempts: int = 3
    backoff: float = 1.0
    resolve: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookAlertSpec(AlertSpec):
    """A POST of generic JSON (``webhook``) or a Slack-compatible ``{"text": …}`` (``slack``)."""

    url: str
    token_file: str | None = None
    token_env: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailAlertSpec(AlertSpec):
    """A plain-text mail over SMTP: STARTTLS (default), implicit TLS (``tls``) or, for a local
    relay, ``none``; AUTH when `username` is given, with the password from a file or env."""

    host: str
    port: int
    tls: SmtpTls = "starttls"
    sender: str
    to: tuple[str, ...]
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    ca_file: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PagerDutyAlertSpec(AlertSpec):
    """PagerDuty Events API v2: one event per alert, deduplicated per (kind, rule, key)."""

    url: str = PAGERDUTY_URL
    routing_key_file: str | None = None
    routing_key_env: str | None = None
    severity: tuple[tuple[AlertKind, Severity], ...] = DEFAULT_SEVERITY


def _secret_source(fields: Fields, file_key: str, env_key: str, *, required: bool) -> dict[str, str]:
    """The `file_key`/`env_key` pair naming where a secret lives: one of them, never both."""
    given = {key: node.string() for key in (file_key, env_key) if (node := fields.get(key)) is not None}
    if len(given) == 2:
        fields.require(env_key).fail(f"give `{file_key}` or `{env_key}`, not both")
    if required and not given:
        fields.node.fail(f"needs `{file_key}` or `{env_key}` (the secret is never written in the config)")
    return given


def _address(node: Node, *, display: bool) -> str:
    """An email address (``name <addr>`` too when `display`): no line breaks, one ``@``."""
    text = node.string().strip()
    name, addr = parseaddr(text)
    if (
        any(c in text for c in "\r\n")
        or addr.count("@") != 1
        or not all(addr.split("@"))
        or (name and not display)
    ):
        node.fail(f"expected an email address like alerts@example.com, got {text!r}")
    return text


def _webhook(fields: Fields) -> dict[str, Any]:
    url = fields.require("url").url(("http", "https"), hint="give a token in token_file or token_env")
    return {
        "url": url,
        "name": f"{fields.require('type').value}:{urlsplit(url).hostname}",
        **_secret_source(fields, "token_file", "token_env", required=False),
    }


def _email(fields: Fields) -> dict[str, Any]:
    host_node = fields.require("host")
    host = host_node.string().strip()
    if any(c in host for c in "/:@ ") and not _is_ip(host):
        host_node.fail(f"expected a host name or address (the port goes in `port`), got {host!r}")
    tls = tls_node.choice(SMTP_TLS) if (tls_node := fields.get("tls")) else "starttls"
    port = p.integer(min=1, max=65535) if (p := fields.get("port")) else SMTP_PORTS[tls]
    to = tuple(_address(item, display=False) for item in fields.require("to").items())
    if not to:
        fields.require("to").fail("needs at least one address")
    kwargs: dict[str, Any] = {
        "host": host,
        "port": port,
        "tls": tls,
        "sender": _address(fields.require("from"), display=True),
        "to": to,
        "name": f"email:{host}",
        **_secret_source(fields, "password_file", "password_env", required=False),
    }
    if (username := fields.get("username")) is not None:
        kwargs["username"] = username.string()
        if "password_file" not in kwargs and "password_env" not in kwargs:
            fields.node.fail("`username` needs `password_file` or `password_env`")
        if tls == "none":
            fields.require("tls").fail(
                "AUTH needs TLS: with `tls: none` the password would cross the wire in clear"
            )
    elif "password_file" in kwargs or "password_env" in kwargs:
        fields.node.fail("a password needs a `username`")
    if (ca_file := fields.get("ca_file")) is not None:
        if tls == "none":
            ca_file.fail("only applies with `tls: starttls` or `tls: tls`")
        kwargs["ca_file"] = ca_file.string()
    return kwargs


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _pagerduty(fields: Fields) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "name": "pagerduty",
        **_secret_source(fields, "routing_key_file", "routing_key_env", required=True),
    }
    if (url := fields.get("url")) is not None:
        kwargs["url"] = url.url(
            ("http", "https"), hint="the routing key goes in routing_key_file or routing_key_env"
        )
    if (severity := fields.get("severity")) is not None:
        own = severity.fields(set(ALERT_KINDS))
        chosen = dict(DEFAULT_SEVERITY)
        for kind in ALERT_KINDS:
            if (node := own.get(kind)) is not None:
                chosen[kind] = node.choice(SEVERITIES)
        kwargs["severity"] = tuple(sorted(chosen.items()))
    return kwargs


# type -> (spec class, parser of the type's own keys returning spec kwargs incl. a default name)
_TYPES: dict[str, tuple[type[AlertSpec], Callable[[Fields], dict[str, Any]]]] = {
    "webhook": (WebhookAlertSpec, _webhook),
    "slack": (WebhookAlertSpec, _webhook),
    "email": (EmailAlertSpec, _email),
    "pagerduty": (PagerDutyAlertSpec, _pagerduty),
}
# YAML keys that are not spec field names.
_RENAMED: dict[str, tuple[str, str]] = {"email": ("from", "sender")}


def parse_alert(node: Node) -> AlertSpec:
    """One ``alerts[i]`` entry; unknown types and keys are ConfigErrors naming the path."""
    if not isinstance(node.value, dict):
        node.fail("expected a mapping like {type: email, ...}")
    kind = Node(node.value.get("type"), f"{node.path}.type").choice(ALERT_TYPES)
    cls, parse_own = _TYPES[kind]
    allowed = {f.name for f in dataclasses.fields(cls)}
    if kind in _RENAMED:
        yaml_key, field_name = _RENAMED[kind]
        allowed = (allowed - {field_name}) | {yaml_key}
    fields = node.fields(allowed)
    kwargs: dict[str, Any] = {"type": kind, **parse_own(fields)}
    if (name := fields.get("name")) is not None:
        kwargs["name"] = name.string()
    for key in ("cooldown", "group"):
        if (value := fields.get(key)) is not None:
            kwargs[key] = value.duration()
    if (timeout := fields.get("timeout")) is not None:
        kwargs["timeout"] = timeout.duration(min=0.1)
    if (attempts := fields.get("attempts")) is not None:
        kwargs["attempts"] = attempts.integer(min=1, max=20)
    if (backoff := fields.get("backoff")) is not None:
        kwargs["backoff"] = backoff.duration(min=0.01)
    if (resolve := fields.get("resolve")) is not None:
        kwargs["resolve"] = resolve.boolean()
    return cls(**kwargs)


def parse_alerts(node: Node) -> tuple[AlertSpec, ...]:
    """The ``alerts:`` list; channel names (metric labels) must be unique."""
    specs: list[AlertSpec] = []
    for item in node.items():
        spec = parse_alert(item)
        if any(s.name == spec.name for s in specs):
            item.fail(f"duplicate alert channel name {spec.name!r}; give one of them a `name:`")
        specs.append(spec)
    return tuple(specs)
