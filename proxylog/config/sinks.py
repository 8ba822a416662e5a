"""Sink specs: where records go, parsed from ``sinks:``; one parser per sink type.

Every spec is frozen and hashable (mappings are stored as sorted tuples of pairs), so the
runtime can tell an unchanged sink from a changed one on reload.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from proxylog.config.reader import Fields, Node, display_url

Overflow = Literal["spool", "drop"]
OVERFLOWS: tuple[Overflow, ...] = get_args(Overflow)
HttpFormat = Literal["ndjson", "elasticsearch", "loki"]
HTTP_FORMATS: tuple[HttpFormat, ...] = get_args(HttpFormat)
SyslogTransport = Literal["udp", "tcp", "tls"]
SYSLOG_TRANSPORTS: tuple[SyslogTransport, ...] = get_args(SyslogTransport)

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{i}": 16 + i for i in range(8)},
}  # fmt: skip
SEVERITIES = {
    "emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7,
}  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrySpec:
    """Backoff between attempts at one batch: doubles from `initial` up to `max`, with jitter."""

    initial: float = 0.1
    max: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkSpec:
    """What every sink has: a type, a unique name, its in-memory queue's bounds, what happens
    when the queue overflows (`spool` to disk or `drop` with a count), and its retry backoff."""

    type: str
    name: str
    queue: int = 10_000
    batch: int = 512
    overflow: Overflow = "spool"
    spool: str | None = None  # directory; None: <state_dir>/spool/<name>
    spool_max: int = 256 * 1024**2
    quarantine: str | None = None  # file; None: <state_dir>/quarantine/<name>.ndjson
    retry: RetrySpec = field(default_factory=RetrySpec)
    # `record.schema`, set by Config: the sink's own events (markers, seals) follow it too
    schema: Literal["nested", "flat"] = "nested"


@dataclass(frozen=True, slots=True, kw_only=True)
class StdoutSpec(SinkSpec):
    """NDJSON on the process's standard output."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RotateSpec:
    """Rotate the file past `size` bytes or at every `every` seconds (UTC-aligned); keep the
    newest `keep` rotated files (None keeps all)."""

    size: int | None = None
    every: float | None = None
    keep: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IntegritySpec:
    """HMAC-chain every line written, with the key read from `key_file`."""

    key_file: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSpec(SinkSpec):
    """NDJSON appended to a file created 0640; optional rotation, fsync interval (0: every
    batch, None: leave it to the OS) and integrity chain."""

    path: str
    rotate: RotateSpec | None = None
    fsync: float | None = None
    integrity: IntegritySpec | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSpec:
    """Client TLS: the CA bundle to trust (None: the system's), an optional client
    certificate, the server name to check, and whether to verify at all."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    verify: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class SyslogSpec(SinkSpec):
    """RFC 5424 messages over UDP, TCP (RFC 6587 octet counting) or TLS."""

    transport: SyslogTransport
    host: str
    port: int
    facility: int = FACILITIES["local0"]
    severity: int = SEVERITIES["info"]
    app_name: str = "proxylog"
    hostname: str | None = None
    timeout: float = 10.0
    resend: int = 1024 * 1024
    tls: TlsSpec | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSpec(SinkSpec):
    """Batches POSTed to a collector as NDJSON, an Elasticsearch/OpenSearch ``_bulk`` body or
    a Loki push; the token comes from `token_file` or `token_env`, never from the YAML."""

    url: str
    format: HttpFormat = "ndjson"
    gzip: bool = True
    timeout: float = 10.0
    token_file: str | None = None
    token_env: str | None = None
    auth_header: str = "Authorization"
    auth_scheme: str | None = "Bearer"
    headers: tuple[tuple[str, str], ...] = ()
    index: str | None = None
    labels: tuple[tuple[str, str], ...] = (("job", "proxylog"),)
    tls: TlsSpec | None = None


def _retry(node: Node) -> RetrySpec:
    fields = node.fields({"initial", "max"})
    defaults = RetrySpec()
    initial = fields.get("initial")
    ceiling = fields.get("max")
    spec = RetrySpec(
        initial=initial.duration(min=0.001) if initial else defaults.initial,
        max=ceiling.duration(min=0.001) if ceiling else defaults.max,
    )
    if spec.max < spec.initial:
        node.fail(f"max ({spec.max:g}s) must not be below initial ({spec.initial:g}s)")
    return spec


def _file(fields: Fields) -> dict[str, Any]:
    path = fields.require("path").string()
    kwargs: dict[str, Any] = {"path": path, "name": f"file:{path}"}
    if (rotate := fields.get("rotate")) is not None:
        kwargs["rotate"] = _rotate(rotate)
    if (fsync := fields.get("fsync")) is not None:
        kwargs["fsync"] = fsync.duration()
    if (integrity := fields.get("integrity")) is not None:
        own = integrity.fields({"key_file"})
        kwargs["integrity"] = IntegritySpec(key_file=own.require("key_file").string())
    return kwargs


def _rotate(node: Node) -> RotateSpec:
    fields = node.fields({"size", "every", "keep"})
    size = fields.get("size")
    every = fields.get("every")
    keep = fields.get("keep")
    if size is None and every is None:
        node.fail("needs `size` (like 100MB), `every` (like 1d) or both")
    return RotateSpec(
        size=size.size(min=1) if size else None,
        every=every.duration(min=1) if every else None,
        keep=keep.integer(min=1) if keep else None,
    )


def _tls(node: Node) -> TlsSpec:
    fields = node.fields({"ca", "cert", "key", "server_name", "verify"})
    strings = {k: n.string() for k in ("ca", "cert", "key", "server_name") if (n := fields.get(k))}
    verify = fields.get("verify")
    if "key" in strings and "cert" not in strings:
        Node(None, f"{node.path}.cert").fail("is required when `key` is given")
    return TlsSpec(**strings, verify=verify.boolean() if verify else True)


def _syslog(fields: Fields) -> dict[str, Any]:
    node = fields.require("address")
    text = node.url(
        SYSLOG_TRANSPORTS, hint="syslog has no credentials", example="tcp://127.0.0.1:514", need_port=True
    )
    parts = urlsplit(text)
    shown = display_url(text)
    transport = Node(parts.scheme, node.path).choice(SYSLOG_TRANSPORTS)
    kwargs: dict[str, Any] = {
        "transport": transport,
        "host": parts.hostname,
        "port": parts.port,
        "name": f"syslog:{shown}",
    }
    if (facility := fields.get("facility")) is not None:
        kwargs["facility"] = FACILITIES[facility.choice(tuple(FACILITIES))]
    if (severity := fields.get("severity")) is not None:
        kwargs["severity"] = SEVERITIES[severity.choice(tuple(SEVERITIES))]
    for key in ("app_name", "hostname"):
        if (value := fields.get(key)) is not None:
            kwargs[key] = _printable(value, 48 if key == "app_name" else 255)
    if (timeout := fields.get("timeout")) is not None:
        kwargs["timeout"] = timeout.duration(min=0.001)
    if (resend := fields.get("resend")) is not None:
        kwargs["resend"] = resend.size()
    tls = fields.get("tls")
    if tls is not None and transport != "tls":
        tls.fail("only applies to a tls:// address")
    if transport == "tls":
        kwargs["tls"] = _tls(tls) if tls is not None else TlsSpec()
    return kwargs


def _printable(node: Node, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, at most `limit` chars."""
    text = node.string()
    if len(text) > limit or not all(33 <= ord(c) <= 126 for c in text):
        node.fail(f"expected at most {limit} printable ASCII characters without spaces, got {text!r}")
    return text


def _pairs(node: Node) -> tuple[tuple[str, str], ...]:
    if not isinstance(node.value, dict):
        node.fail("expected a mapping of names to strings")
    pairs = []
    for key, value in node.value.items():
        child = Node(value, f"{node.path}.{key}")
        if not isinstance(key, str) or not key:
            node.fail(f"keys must be non-empty strings, got {key!r}")
        pairs.append((key, str(child.value) if isinstance(child.value, int | float) else child.string()))
    return tuple(sorted(pairs))


def _http(fields: Fields) -> dict[str, Any]:
    url = fields.require("url").url(("http", "https"), hint="give a token in token_file or token_env")
    # The query may carry a key (?api_key=): the default name, shown in status and metrics, drops it.
    # Sinks differing only in their query stay distinct by a digest of it, which shows nothing.
    query = urlsplit(url).query
    digest = f"?{hashlib.sha256(query.encode()).hexdigest()[:8]}" if query else ""
    kwargs: dict[str, Any] = {"url": url, "name": f"http:{display_url(url)}{digest}"}
    if (fmt := fields.get("format")) is not None:
        kwargs["format"] = fmt.choice(HTTP_FORMATS)
    if (gzip := fields.get("gzip")) is not None:
        kwargs["gzip"] = gzip.boolean()
    if (timeout := fields.get("timeout")) is not None:
        kwargs["timeout"] = timeout.duration(min=0.001)
    for key in ("token_file", "token_env", "auth_header", "index"):
        if (value := fields.get(key)) is not None:
            kwargs[key] = value.string()
    if "token_file" in kwargs and "token_env" in kwargs:
        fields.require("token_env").fail("give `token_file` or `token_env`, not both")
    if "auth_scheme" in fields.node.value:  # null or "" means: send the token as the whole value
        scheme = fields.node.value["auth_scheme"]
        kwargs["auth_scheme"] = Node(scheme, f"{fields.node.path}.auth_scheme").string() if scheme else None
    if (headers := fields.get("headers")) is not None:
        kwargs["headers"] = _pairs(headers)
        if any(
            name.lower() == kwargs.get("auth_header", "Authorization").lower()
            for name, _ in kwargs["headers"]
        ):
            headers.fail("must not carry the auth header: put the token in `token_file` or `token_env`")
    if (labels := fields.get("labels")) is not None:
        kwargs["labels"] = _pairs(labels)
        if not kwargs["labels"]:
            labels.fail("Loki needs at least one stream label")
    if kwargs.get("format") == "elasticsearch":
        path = urlsplit(url).path.rstrip("/")
        if not path.endswith("/_bulk"):
            fields.require("url").fail(f"an elasticsearch url ends in /_bulk, got {display_url(url)!r}")
        if path == "/_bulk" and "index" not in kwargs:
            fields.node.fail("elasticsearch needs `index` (or a url like http://host:9200/INDEX/_bulk)")
    if (tls := fields.get("tls")) is not None:
        if not url.startswith("https:"):
            tls.fail("only applies to an https:// url")
        kwargs["tls"] = _tls(tls)
    return kwargs


# type -> (spec class, parser of the type's own keys returning spec kwargs incl. a default name)
_TYPES: dict[str, tuple[type[SinkSpec], Callable[[Fields], dict[str, Any]]]] = {
    "stdout": (StdoutSpec, lambda fields: {}),
    "file": (FileSpec, _file),
    "syslog": (SyslogSpec, _syslog),
    "http": (HttpSpec, _http),
}
SINK_TYPES = tuple(_TYPES)
# Keys a type parses itself that are not spec fields (e.g. syslog's `address`).
_EXTRA_KEYS: dict[str, frozenset[str]] = {"syslog": frozenset({"address"})}
# Spec fields the YAML may not set directly (derived from another key).
_DERIVED_KEYS: dict[str, frozenset[str]] = {"syslog": frozenset({"transport", "host", "port"})}


def parse_sink(node: Node) -> SinkSpec:
    """One ``sinks[i]`` entry; unknown types and keys are ConfigErrors naming the path."""
    if not isinstance(node.value, dict):
        node.fail("expected a mapping like {type: stdout}")
    kind = Node(node.value.get("type"), f"{node.path}.type").choice(SINK_TYPES)
    cls, parse_own = _TYPES[kind]
    allowed = (
        frozenset(f.name for f in dataclasses.fields(cls)) | _EXTRA_KEYS.get(kind, frozenset())
    ) - _DERIVED_KEYS.get(kind, frozenset())
    fields = node.fields(allowed)
    kwargs: dict[str, Any] = {"type": kind, "name": kind, **parse_own(fields)}
    if (name := fields.get("name")) is not None:
        kwargs["name"] = name.string()
    if (queue := fields.get("queue")) is not None:
        kwargs["queue"] = queue.integer(min=1)
    if (batch := fields.get("batch")) is not None:
        kwargs["batch"] = batch.integer(min=1)
    if (overflow := fields.get("overflow")) is not None:
        kwargs["overflow"] = overflow.choice(OVERFLOWS)
    if (spool := fields.get("spool")) is not None:
        kwargs["spool"] = spool.string()
    if (quarantine := fields.get("quarantine")) is not None:
        kwargs["quarantine"] = quarantine.string()
    if (spool_max := fields.get("spool_max")) is not None:
        kwargs["spool_max"] = spool_max.size(min=4096)
    if (retry := fields.get("retry")) is not None:
        kwargs["retry"] = _retry(retry)
    return cls(**kwargs)


def parse_sinks(node: Node) -> tuple[SinkSpec, ...]:
    """The ``sinks:`` list; sink names must be unique (file sinks default to ``file:PATH``)."""
    specs: list[SinkSpec] = []
    for item in node.items():
        spec = parse_sink(item)
        if any(s.name == spec.name for s in specs):
            item.fail(f"duplicate sink name {spec.name!r}; give one of them a `name:`")
        specs.append(spec)
    return tuple(specs)
