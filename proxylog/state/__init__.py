"""Where the rule engine keeps what it must remember: windowed counters, bans, offence history.

The engine talks to a `Store` only through the protocols below, so a shared backend (redis,
for several workers or hosts) can replace the in-process `MemoryStore` without
touching the engine. Every method is synchronous and must stay cheap: it runs per request;
a shared store keeps a local view and syncs it from a background task (`start`/`close`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from proxylog.config.state import StateSpec

Precision = Literal["exact", "approx"]
# What a shared store tells its owner: another instance changed the mode or the runtime
# allowlist ("mode", "allow", "disallow"), or the backend went away or came back
# ("degraded", "recovered": the value says why).
Listener = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Ban:
    """An active ban. `key` is an IP or a CIDR (a client network key); `count` is the offence
    number that set its length (1 for a first offence)."""

    key: str
    rule: str
    since: float
    until: float
    count: int = 1
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """How one rule counts: events (or distinct members) per key within a sliding window.

    `cap` bounds what an exact window stores per key (the rule's threshold suffices to decide);
    `max_keys` bounds how many keys are tracked (least recently used are forgotten).
    """

    window: float
    precision: Precision
    distinct: bool
    cap: int
    max_keys: int


class Counter(Protocol):
    """Per-key sliding-window counts for one rule."""

    def add(self, key: str, now: float, member: str | None = None) -> int:
        """Count one event (or `member`, for a distinct counter) and return the count in the window."""
        ...

    def peek(self, key: str, now: float) -> int:
        """The count in the window, without counting anything."""
        ...

    def __len__(self) -> int: ...


class BanTable(Protocol):
    """Active bans by key. Never evicts: a ban ends by expiry or by `pop`."""

    def get(self, key: str) -> Ban | None:
        """The ban of exactly this key (it may have expired but not yet been swept)."""
        ...

    def put(self, ban: Ban) -> bool:
        """Store a ban; False when the table is full (the ban is refused, nothing is evicted)."""
        ...

    def pop(self, key: str) -> Ban | None:
        """Remove and return the ban of this key, if any."""
        ...

    def expire(self, now: float) -> list[Ban]:
        """Remove and return the bans whose `until` has passed."""
        ...

    def prefixes(self, version: int) -> tuple[int, ...]:
        """The network prefix lengths banned for an IP version (4 or 6), excluding host bans."""
        ...

    def all(self) -> list[Ban]:
        """Every stored ban, soonest expiry first."""
        ...

    def __len__(self) -> int: ...


class Store(Protocol):
    """Counters, bans and offence history for one engine (and its successors after a reload)."""

    @property
    def bans(self) -> BanTable:
        """The ban table (shared by every engine built on this store)."""
        ...

    def counter(self, name: str, spec: CounterSpec) -> Counter:
        """The counter called `name`, created if new or if its spec changed."""
        ...

    def retain(self, names: Iterable[str]) -> None:
        """Forget every counter not in `names` (rules removed or changed by a reload)."""
        ...

    def offend(self, key: str, now: float, memory: float) -> int:
        """Note an offence by `key`; return how many it committed within `memory` seconds."""
        ...

    listener: Listener | None

    def announce(self, kind: str, value: str) -> None:
        """Share an operator's change ("mode", "allow", "disallow") with the other instances."""
        ...

    def start(self) -> None:
        """Start syncing in the background (on the running event loop)."""
        ...

    async def close(self) -> None:
        """Flush what is pending (briefly) and stop syncing."""
        ...

    def stats(self) -> dict[str, Any]:
        """The backend's health and traffic, for `ctl status` and metrics."""
        ...


def build_store(spec: StateSpec | None = None, clock: Callable[[], float] | None = None) -> Store:
    """The Store a `state:` section asks for (None: in-process memory). Raises ConfigError
    naming the key for an unreadable password."""
    from proxylog.state.memory import MemoryStore

    if spec is None or spec.backend == "memory":
        return MemoryStore()
    from proxylog.state.redis import RedisStore

    return RedisStore(spec, clock=clock)
