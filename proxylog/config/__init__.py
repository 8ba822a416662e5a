"""YAML → frozen specs, validated whole; every error names the key path (``sinks[1].path: …``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from proxylog.config.alerts import AlertSpec, parse_alerts
from proxylog.config.ops import ControlSpec, MetricsSpec, parse_control, parse_metrics
from proxylog.config.reader import (
    Node,
    load_yaml,
    optional,
    parse_duration,
    parse_host_port,
    parse_size,
)
from proxylog.config.redact import RedactSpec, parse_redact
from proxylog.config.rule_specs import RulesSpec
from proxylog.config.rules import parse_rules
from proxylog.config.sinks import FileSpec, SinkSpec, StdoutSpec, parse_sinks
from proxylog.config.state import StateSpec, parse_state
from proxylog.errors import ConfigError
from proxylog.net import IPNetwork
from proxylog.record import MODES, Mode

__all__ = [
    "AlertSpec",
    "Config",
    "ConfigError",
    "ControlSpec",
    "FileSpec",
    "LimitSpec",
    "LogSpec",
    "MetricsSpec",
    "RecordSpec",
    "RedactSpec",
    "RulesSpec",
    "SinkSpec",
    "StateSpec",
    "StdoutSpec",
    "TimeoutSpec",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_host_port",
    "parse_listen",
    "parse_size",
    "parse_upstream",
]

Schema = Literal["nested", "flat"]
SCHEMAS: tuple[Schema, ...] = get_args(Schema)
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
# Which data plane serves: `auto` is the fast plane for a plain-HTTP reverse proxy to an http://
# upstream, mitmproxy for everything else (`modes:`, TLS, HTTP/2, transparent).
Engine = Literal["auto", "fast", "mitmproxy"]
ENGINES: tuple[Engine, ...] = get_args(Engine)
UPSTREAM_SCHEMES = ("http", "https")


@dataclass(frozen=True, slots=True)
class TimeoutSpec:
    """Seconds: upstream = request end → response headers; drain = shutdown grace; idle = keep-alive;
    header = a connection's time to send complete request headers (slowloris guard, 0 = off).
    A request body must arrive at `body_rate` bytes/s or more, averaged over each
    `body_window` (0 = off); `write` is how long a client may leave its response unread."""

    upstream: float = 60.0
    drain: float = 30.0
    idle: float = 120.0
    header: float = 10.0
    body_rate: int = 1024
    body_window: float = 10.0
    write: float = 60.0


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """Body handling: bodies over `stream_threshold` are streamed and counted, never stored;
    `header_bytes` caps a request head (request line and headers), refused with 431."""

    body_size: int | None = None
    stream_threshold: int = 1024 * 1024
    header_bytes: int = 64 * 1024
    connections_per_client: int = 64


@dataclass(frozen=True, slots=True)
class RecordSpec:
    """Which headers a record captures (lower-case names) and how long any string may be."""

    headers: tuple[str, ...] = ("referer", "content-type")
    response_headers: tuple[str, ...] = ("content-type",)
    max_field_bytes: int = 4096
    schema: Schema = "nested"
    header_bytes: frozenset[bytes] = field(init=False, repr=False, compare=False)
    response_header_bytes: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The request path matches raw header names: precompute them once per config.
        object.__setattr__(self, "header_bytes", frozenset(h.encode() for h in self.headers))
        object.__setattr__(
            self, "response_header_bytes", frozenset(h.encode() for h in self.response_headers)
        )


@dataclass(frozen=True, slots=True)
class LogSpec:
    """proxylog's and mitmproxy's own diagnostics on stderr (never the access records)."""

    level: LogLevel = "warning"
    max_line_bytes: int = 2048


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; `proxylog serve` flags are applied with `replace`."""

    upstream: str | None = "http://127.0.0.1:3000"
    listen: tuple[str, int] = ("127.0.0.1", 8080)
    modes: tuple[str, ...] = ()
    engine: Engine = "auto"
    workers: int = 1
    trusted_proxies: tuple[IPNetwork, ...] = ()
    mode: Mode = Mode.MONITOR
    timeouts: TimeoutSpec = field(default_factory=TimeoutSpec)
    limits: LimitSpec = field(default_factory=LimitSpec)
    record: RecordSpec = field(default_factory=RecordSpec)
    redact: RedactSpec = field(default_factory=RedactSpec)
    rules: RulesSpec = field(default_factory=RulesSpec)
    sinks: tuple[SinkSpec, ...] = (StdoutSpec(type="stdout", name="stdout"),)
    log: LogSpec = field(default_factory=LogSpec)
    control: ControlSpec = field(default_factory=ControlSpec)
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    alerts: tuple[AlertSpec, ...] = ()
    state: StateSpec = field(default_factory=StateSpec)
    state_dir: str = field(default_factory=lambda: default_state_dir())
    source: str | None = None

    def __post_init__(self) -> None:
        # A sink writes its own events (loss markers, chain seals) in the records' schema.
        if any(spec.schema != self.record.schema for spec in self.sinks):
            sinks = tuple(replace(spec, schema=self.record.schema) for spec in self.sinks)
            object.__setattr__(self, "sinks", sinks)

    @property
    def control_socket(self) -> str:
        """The control socket path: `control.socket`, else ``control.sock`` in systemd's
        ``$RUNTIME_DIRECTORY`` when set, else in `state_dir`."""
        return self.control.socket or os.path.join(runtime_directory() or self.state_dir, "control.sock")

    def with_overrides(self, **changes: Any) -> Config:
        """A copy with command-line overrides applied (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def runtime_directory() -> str | None:
    """systemd's ``$RUNTIME_DIRECTORY`` (its first entry), if the service has one."""
    return os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None


def default_state_dir() -> str:
    """``$STATE_DIRECTORY`` (systemd), else ``$XDG_STATE_HOME/proxylog`` or ~/.local/state."""
    if state := os.environ.get("STATE_DIRECTORY"):
        return state.split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "proxylog")


_TOP_KEYS = frozenset(
    {
        "upstream",
        "listen",
        "modes",
        "engine",
        "workers",
        "trusted_proxies",
        "mode",
        "timeouts",
        "limits",
        "record",
        "sinks",
        "log",
        "state_dir",
        "redact",
        "rules",
        "intel",
        "allow",
        "control",
        "metrics",
        "alerts",
        "state",
    }
)


def parse_upstream(value: Any, path: str = "upstream") -> str:
    """An ``http://`` or ``https://`` URL for Puma, from the `upstream:` key or the
    ``--upstream`` flag (`path` names which); raises ConfigError."""
    return Node(value, path).url(UPSTREAM_SCHEMES)


def parse_listen(value: Any, path: str = "listen") -> tuple[str, int]:
    """``HOST:PORT`` to accept clients on, from the `listen:` key or the ``--listen`` flag
    (`path` names which); raises ConfigError."""
    return Node(value, path).host_port()


def parse_config(data: Any, source: str | None = None) -> Config:
    """Validate a parsed YAML document into a Config; raises ConfigError naming the key path."""
    root = Node({} if data is None else data)
    fields = root.fields(_TOP_KEYS)
    kwargs: dict[str, Any] = {"source": source}
    if "upstream" in fields:
        kwargs["upstream"] = parse_upstream(fields.require("upstream").value)
    if "listen" in fields:
        kwargs["listen"] = parse_listen(fields.require("listen").value)
    if "modes" in fields:
        kwargs["modes"] = fields.require("modes").strings()
    if "engine" in fields:
        kwargs["engine"] = fields.require("engine").choice(ENGINES)
    if "workers" in fields:
        kwargs["workers"] = fields.require("workers").integer(min=1, max=MAX_WORKERS)
    if "trusted_proxies" in fields:
        kwargs["trusted_proxies"] = _parse_trusted_proxies(fields.require("trusted_proxies"))
    if "mode" in fields:
        kwargs["mode"] = Mode(fields.require("mode").choice(MODES))
    if "timeouts" in fields:
        kwargs["timeouts"] = _parse_timeouts(fields.require("timeouts"))
    if "limits" in fields:
        kwargs["limits"] = _parse_limits(fields.require("limits"))
    if "record" in fields:
        kwargs["record"] = _parse_record(fields.require("record"))
    if "sinks" in fields:
        kwargs["sinks"] = parse_sinks(fields.require("sinks"))
    if "log" in fields:
        kwargs["log"] = _parse_log(fields.require("log"))
    if "redact" in fields:
        kwargs["redact"] = parse_redact(fields.require("redact"))
    if any(key in fields for key in ("rules", "intel", "allow")):
        kwargs["rules"] = parse_rules(
            fields.get("rules"),
            fields.get("intel"),
            fields.get("allow"),
            base_dir=os.path.dirname(os.path.abspath(source)) if source else None,
        )
    if "control" in fields:
        kwargs["control"] = parse_control(fields.require("control"))
    if "metrics" in fields:
        kwargs["metrics"] = parse_metrics(fields.require("metrics"))
    if "alerts" in fields:
        kwargs["alerts"] = parse_alerts(fields.require("alerts"))
    if "state" in fields:
        kwargs["state"] = parse_state(fields.require("state"))
    if "state_dir" in fields:
        kwargs["state_dir"] = os.path.expanduser(fields.require("state_dir").string())
    return Config(**kwargs)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML file; raises ConfigError for unreadable or invalid files,
    including a mapping key given twice."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("", f"cannot read {os.fspath(path)}: {e}") from e
    try:
        data = load_yaml(text, name=os.fspath(path))
    except ConfigError as e:
        raise ConfigError(e.path, f"{e.message} of {os.fspath(path)}") from e
    except yaml.YAMLError as e:
        raise ConfigError("", f"{os.fspath(path)} is not valid YAML: {e}") from e
    return parse_config(data, source=os.fspath(path))


# Shorter prefixes trust (nearly) the whole internet's X-Forwarded-For: any client could
# then pick the IP it is logged, rate-limited and banned as.
_MIN_TRUSTED_PREFIX = {4: 8, 6: 16}


def _parse_trusted_proxies(node: Node) -> tuple[IPNetwork, ...]:
    networks = []
    for item in node.items():
        net = item.network()
        local = net.is_private or net.is_link_local  # fc00::/7, fe80::/10: nobody's internet
        if net.prefixlen < _MIN_TRUSTED_PREFIX[net.version] and not local:
            item.fail(
                f"{net} is too broad to trust (prefix shorter than /{_MIN_TRUSTED_PREFIX[net.version]}):"
                " every client could choose its own IP with X-Forwarded-For; list your proxies'"
                " addresses or subnets"
            )
        networks.append(net)
    return tuple(networks)


def _parse_timeouts(node: Node) -> TimeoutSpec:
    fields = node.fields({"upstream", "drain", "idle", "header", "body_rate", "body_window", "write"})
    defaults = TimeoutSpec()
    return TimeoutSpec(
        upstream=optional(fields.get("upstream"), lambda n: n.duration(min=0.001), defaults.upstream),
        drain=optional(fields.get("drain"), lambda n: n.duration(), defaults.drain),
        idle=optional(fields.get("idle"), lambda n: n.duration(min=1), defaults.idle),
        header=optional(fields.get("header"), lambda n: n.duration(), defaults.header),
        body_rate=optional(fields.get("body_rate"), lambda n: n.size(), defaults.body_rate),
        body_window=optional(fields.get("body_window"), lambda n: n.duration(), defaults.body_window),
        write=optional(fields.get("write"), lambda n: n.duration(), defaults.write),
    )


def _parse_limits(node: Node) -> LimitSpec:
    fields = node.fields({"body_size", "stream_threshold", "header_bytes", "connections_per_client"})
    defaults = LimitSpec()
    return LimitSpec(
        body_size=optional(fields.get("body_size"), lambda n: n.size(min=1), defaults.body_size),
        stream_threshold=optional(
            fields.get("stream_threshold"), lambda n: n.size(min=1), defaults.stream_threshold
        ),
        header_bytes=optional(fields.get("header_bytes"), lambda n: n.size(min=1024), defaults.header_bytes),
        connections_per_client=optional(
            fields.get("connections_per_client"), lambda n: n.integer(min=1), defaults.connections_per_client
        ),
    )


def _parse_record(node: Node) -> RecordSpec:
    fields = node.fields({"headers", "response_headers", "max_field_bytes", "schema"})
    defaults = RecordSpec()
    return RecordSpec(
        headers=optional(fields.get("headers"), Node.header_names, defaults.headers),
        response_headers=optional(
            fields.get("response_headers"), Node.header_names, defaults.response_headers
        ),
        max_field_bytes=optional(
            fields.get("max_field_bytes"), lambda n: n.size(min=64), defaults.max_field_bytes
        ),
        schema=optional(fields.get("schema"), lambda n: n.choice(SCHEMAS), defaults.schema),
    )


def _parse_log(node: Node) -> LogSpec:
    fields = node.fields({"level", "max_line_bytes"})
    defaults = LogSpec()
    return LogSpec(
        level=optional(fields.get("level"), lambda n: n.choice(LOG_LEVELS), defaults.level),
        max_line_bytes=optional(
            fields.get("max_line_bytes"), lambda n: n.size(min=80), defaults.max_line_bytes
        ),
    )


MAX_WORKERS = 64


def check_workers(config: Config) -> None:
    """Raise ConfigError unless `config` can run with `workers:` processes: more than one
    needs the fast plane (its listener shares the port with SO_REUSEPORT; mitmproxy's cannot)
    and a fixed port (with port 0 each worker would get a port of its own)."""
    if config.workers == 1:
        return
    if serving_engine(config) != "fast":
        raise ConfigError(
            "workers",
            f"{config.workers} workers need the fast engine (one port shared with SO_REUSEPORT), "
            "but this config is served by mitmproxy: run one proxylog per port instead, sharing "
            "state through `state: {backend: redis}`",
        )
    if config.listen[1] == 0:
        raise ConfigError("workers", "several workers need a fixed listen port, not port 0")


def serving_engine(config: Config) -> Literal["fast", "mitmproxy"]:
    """The data plane that serves `config`: `engine:` resolved. Raises ConfigError for
    `engine: fast` where only mitmproxy can serve (`modes:`, an https:// upstream)."""
    plain = not config.modes and config.upstream is not None and config.upstream.startswith("http://")
    if config.engine == "mitmproxy" or (config.engine == "auto" and not plain):
        return "mitmproxy"
    if not plain:
        why = "`modes:` is set" if config.modes else "the upstream is not http://"
        raise ConfigError(
            "engine",
            f"fast serves a plain-HTTP reverse proxy to an http:// upstream, but {why}: "
            "use auto or mitmproxy",
        )
    return "fast"
