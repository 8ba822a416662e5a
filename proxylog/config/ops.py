"""Operations specs: the control socket (``control:``), metrics (``metrics:``), alerts (``alerts:``)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Literal, get_args

from proxylog.config.reader import Node

AlertType = Literal["webhook", "slack"]
ALERT_TYPES: tuple[AlertType, ...] = get_args(AlertType)


@dataclass(frozen=True, slots=True)
class ControlSpec:
    """The admin API: a 0600 Unix socket (None: ``<state_dir>/control.sock``), optionally TCP on
    loopback with a bearer token; `watch` reloads the config when its file changes."""

    socket: str | None = None
    tcp: tuple[str, int] | None = None
    token_file: str | None = None
    token_env: str | None = None
    watch: bool = False
    watch_interval: float = 2.0


@dataclass(frozen=True, slots=True)
class MetricsSpec:
    """Prometheus exposition on a loopback port; off when `listen` is None."""

    listen: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class AlertSpec:
    """One webhook receiving alerts: generic JSON or Slack-compatible."""

    type: AlertType
    url: str
    cooldown: float = 300.0
    group: float = 5.0
    token_file: str | None = None
    token_env: str | None = None
    timeout: float = 5.0


def _loopback(node: Node) -> tuple[str, int]:
    host, port = node.host_port()
    try:
        loopback = ipaddress.ip_address(host or "0.0.0.0").is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        node.fail(f"must be a loopback address (127.0.0.1 or [::1]), got {host or 'all interfaces'!r}")
    return host, port


def parse_control(node: Node) -> ControlSpec:
    fields = node.fields({"socket", "tcp", "token_file", "token_env", "watch", "watch_interval"})
    socket_node = fields.get("socket")
    spec = ControlSpec(
        socket=os.path.expanduser(socket_node.string()) if socket_node else None,
        tcp=_loopback(tcp) if (tcp := fields.get("tcp")) else None,
        token_file=token.string() if (token := fields.get("token_file")) else None,
        token_env=env.string() if (env := fields.get("token_env")) else None,
        watch=watch.boolean() if (watch := fields.get("watch")) else False,
        watch_interval=interval.duration(min=0.1) if (interval := fields.get("watch_interval")) else 2.0,
    )
    if spec.tcp is not None and not (spec.token_file or spec.token_env):
        node.fail("`tcp` needs `token_file` or `token_env`: the TCP control port requires a bearer token")
    return spec


def parse_metrics(node: Node) -> MetricsSpec:
    fields = node.fields({"listen"})
    return MetricsSpec(listen=_loopback(listen) if (listen := fields.get("listen")) else None)


def parse_alerts(node: Node) -> tuple[AlertSpec, ...]:
    specs = []
    for item in node.items():
        fields = item.fields({"type", "url", "cooldown", "group", "token_file", "token_env", "timeout"})
        specs.append(
            AlertSpec(
                type=fields.require("type").choice(ALERT_TYPES),
                url=fields.require("url").url(("http", "https")),
                cooldown=c.duration() if (c := fields.get("cooldown")) else 300.0,
                group=g.duration() if (g := fields.get("group")) else 5.0,
                token_file=t.string() if (t := fields.get("token_file")) else None,
                token_env=e.string() if (e := fields.get("token_env")) else None,
                timeout=t2.duration(min=0.1) if (t2 := fields.get("timeout")) else 5.0,
            )
        )
    return tuple(specs)
