"""The `state:` section: where rule counters, bans, the mode and the runtime allowlist live.

``memory`` (the default) keeps them in this process; ``redis`` shares them with every proxylog
on the same Redis (several hosts behind one load balancer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from proxylog.config.reader import Node, optional

Backend = Literal["memory", "redis"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
REDIS_SCHEMES = ("redis", "rediss")


@dataclass(frozen=True, slots=True)
class StateSpec:
    """`url` is ``redis://HOST:PORT/DB`` or ``rediss://`` (TLS), never with a password: that
    comes from `password_file` or `password_env`. `flush_interval`: how often counter
    updates are batched to Redis; `resync_interval`: the full resync that backs up pub/sub;
    `ttl`: how long the mode and allowlist keys outlive the last proxylog refreshing them."""

    backend: Backend = "memory"
    url: str | None = None
    key_prefix: str = "proxylog:"
    password_file: str | None = None
    password_env: str | None = None
    username: str | None = None
    flush_interval: float = 0.05
    resync_interval: float = 5.0
    connect_timeout: float = 0.5
    ttl: float = 30 * 86400.0


_KEYS = frozenset(
    {
        "backend",
        "url",
        "key_prefix",
        "password_file",
        "password_env",
        "username",
        "flush_interval",
        "resync_interval",
        "connect_timeout",
        "ttl",
    }
)


def parse_state(node: Node) -> StateSpec:
    """The `state:` mapping; raises ConfigError naming the key (``state.url: …``)."""
    fields = node.fields(_KEYS)
    d = StateSpec()
    backend = optional(fields.get("backend"), lambda n: n.choice(BACKENDS), d.backend)
    url = optional(
        fields.get("url"),
        lambda n: n.url(
            REDIS_SCHEMES,
            hint="put the password in state.password_file or state.password_env",
            example="redis://127.0.0.1:6379/0",
        ),
        None,
    )
    if backend == "redis" and url is None:
        node.fail("backend redis needs `url` (redis://HOST:PORT/DB or rediss:// for TLS)")
    if backend == "memory" and url is not None:
        node.fail("`url` is set but backend is memory: set `backend: redis` to share state")
    spec = StateSpec(
        backend=backend,
        url=url,
        key_prefix=optional(fields.get("key_prefix"), lambda n: n.string(), d.key_prefix),
        password_file=optional(fields.get("password_file"), lambda n: n.string(), None),
        password_env=optional(fields.get("password_env"), lambda n: n.string(), None),
        username=optional(fields.get("username"), lambda n: n.string(), None),
        flush_interval=optional(
            fields.get("flush_interval"), lambda n: n.duration(min=0.005), d.flush_interval
        ),
        resync_interval=optional(
            fields.get("resync_interval"), lambda n: n.duration(min=0.1), d.resync_interval
        ),
        connect_timeout=optional(
            fields.get("connect_timeout"), lambda n: n.duration(min=0.01), d.connect_timeout
        ),
        ttl=optional(fields.get("ttl"), lambda n: n.duration(min=60), d.ttl),
    )
    if spec.password_file and spec.password_env:
        node.fail("set one of `password_file` and `password_env`, not both")
    return spec
