"""Operations specs: the control socket (``control:``) and metrics (``metrics:``); alert
channels (``alerts:``) are in `proxylog.config.alerts`."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, replace

from proxylog.config.reader import Node


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
    """Prometheus exposition (``GET``/``HEAD /metrics``); off when `listen` is None. Loopback
    only, unless `public` is set, which also needs a bearer token for scrapers."""

    listen: tuple[str, int] | None = None
    public: bool = False
    token_file: str | None = None
    token_env: str | None = None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host or "0.0.0.0").is_loopback
    except ValueError:
        return host == "localhost"


def _loopback(node: Node, hint: str = "") -> tuple[str, int]:
    host, port = node.host_port()
    if not _is_loopback(host):
        node.fail(
            f"must be a loopback address (127.0.0.1 or [::1]), got {host or 'all interfaces'!r}{hint}"
        )
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
    fields = node.fields({"listen", "public", "token_file", "token_env"})
    public = p.boolean() if (p := fields.get("public")) else False
    spec = MetricsSpec(
        public=public,
        token_file=token.string() if (token := fields.get("token_file")) else None,
        token_env=env.string() if (env := fields.get("token_env")) else None,
    )
    listen = fields.get("listen")
    if listen is None:
        return spec
    if not public:
        hint = " (set `metrics.public: true` and a token to serve a central Prometheus)"
        return replace(spec, listen=_loopback(listen, hint))
    if not (spec.token_file or spec.token_env):
        node.fail("`public: true` needs `token_file` or `token_env`: scrapers must send a bearer token")
    return replace(spec, listen=listen.host_port())

