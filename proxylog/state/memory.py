"""The in-process Store: sliding windows per key in two bounded tiers, bans in their own table.

A counter holds at most `max_keys` keys seen once, as one number each (about 100 bytes a
key), and at most `max_keys` keys seen more than once, as a window object. A spray of
one-off addresses therefore only churns the first tier: the keys that are working towards a
threshold, a scanner's, are not flushed by it. Bans live apart in a table that never evicts,
so memory pressure can never unban anyone.
"""

from __future__ import annotations

import bisect
import heapq
import ipaddress
import math
from collections.abc import Iterable
from typing import Any, Protocol

from cachetools import LRUCache

from proxylog.state import Ban, CounterSpec, Listener

MAX_BANS = 250_000
MAX_OFFENDERS = 100_000


class _Window(Protocol):
    def add(self, now: float, window: float, member: str | None) -> int: ...

    def peek(self, now: float, window: float) -> int: ...


class _WindowType(Protocol):
    def __call__(self, cap: int) -> _Window: ...

    def seeded(self, cap: int, first: float | complex) -> _Window:
        """The window holding one event, as `MemoryCounter` keeps it for a key seen once."""
        ...


def _member_id(member: str | None) -> int:
    """A distinct member's id: its hash cut to 53 bits, so that a float holds it exactly."""
    return hash(member or "") >> 11


class ExactWindow:
    """The last `cap` event times, oldest first: an exact sliding count up to `cap`. A list,
    not a deque: most keys hold one or two times, and a deque always allocates 64 slots."""

    __slots__ = ("cap", "times")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.times: list[float] = []

    @classmethod
    def seeded(cls, cap: int, first: float | complex) -> ExactWindow:
        window = cls(cap)
        window.times.append(first.real)
        return window

    def add(self, now: float, window: float, member: str | None) -> int:
        times = self.times
        times.append(now)
        if len(times) > self.cap:
            del times[0]
        edge = now - window
        if times[0] <= edge:
            del times[: bisect.bisect_right(times, edge)]
        return len(times)

    def peek(self, now: float, window: float) -> int:
        edge = now - window
        return sum(1 for t in self.times if t > edge)


class ExactDistinct:
    """The last `cap` distinct members with when each was last seen: an exact distinct count.
    Members are kept as their hashes (the strings are not held; two members colliding on a
    64-bit hash within one key's window would count once)."""

    __slots__ = ("cap", "seen")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen: dict[int, float] = {}

    @classmethod
    def seeded(cls, cap: int, first: float | complex) -> ExactDistinct:
        window = cls(cap)
        window.seen[int(first.imag)] = first.real
        return window

    def add(self, now: float, window: float, member: str | None) -> int:
        seen = self.seen
        key = _member_id(member)
        seen.pop(key, None)
        seen[key] = now  # insertion order = last-seen order
        if len(seen) > self.cap:
            del seen[next(iter(seen))]
        edge = now - window
        while True:
            oldest = next(iter(seen))
            if seen[oldest] > edge:
                return len(seen)
            del seen[oldest]

    def peek(self, now: float, window: float) -> int:
        edge = now - window
        return sum(1 for t in self.seen.values() if t > edge)


class ApproxWindow:
    """Two fixed buckets of one window each; the previous one weighted by how much of it still
    overlaps the sliding window (Cloudflare's estimate). Constant memory whatever the rate."""

    __slots__ = ("current", "previous", "start")

    def __init__(self, cap: int) -> None:
        self.start = -math.inf
        self.current = 0
        self.previous = 0

    @classmethod
    def seeded(cls, cap: int, first: float | complex) -> ApproxWindow:
        window = cls(cap)
        window.start, window.current = first.real, 1
        return window

    def _roll(self, now: float, window: float) -> None:
        elapsed = now - self.start
        if elapsed < window:
            return
        self.previous = self.current if elapsed < 2 * window else 0
        self.current = 0
        self.start = now if math.isinf(elapsed) else self.start + window * (elapsed // window)

    def add(self, now: float, window: float, member: str | None) -> int:
        self._roll(now, window)
        self.current += 1
        return self.peek(now, window)

    def peek(self, now: float, window: float) -> int:
        self._roll(now, window)
        weight = max(0.0, 1.0 - (now - self.start) / window)
        return self.current + int(self.previous * weight)


class ApproxDistinct:
    """Two buckets of distinct members' hashes (each capped at `cap`), weighted like ApproxWindow."""

    __slots__ = ("cap", "current", "overlap", "previous", "start")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.start = -math.inf
        self.current: set[int] = set()
        self.previous: set[int] = set()
        self.overlap = 0  # members of `current` also in `previous`

    @classmethod
    def seeded(cls, cap: int, first: float | complex) -> ApproxDistinct:
        window = cls(cap)
        window.start = first.real
        window.current.add(int(first.imag))
        return window

    def _roll(self, now: float, window: float) -> None:
        elapsed = now - self.start
        if elapsed < window:
            return
        self.previous = self.current if elapsed < 2 * window else set()
        self.current = set()
        self.overlap = 0
        self.start = now if math.isinf(elapsed) else self.start + window * (elapsed // window)

    def add(self, now: float, window: float, member: str | None) -> int:
        self._roll(now, window)
        key = _member_id(member)
        if key not in self.current and len(self.current) < self.cap:
            self.current.add(key)
            if key in self.previous:
                self.overlap += 1
        return self.peek(now, window)

    def peek(self, now: float, window: float) -> int:
        self._roll(now, window)
        weight = max(0.0, 1.0 - (now - self.start) / window)
        return len(self.current) + int((len(self.previous) - self.overlap) * weight)


_WINDOWS: dict[tuple[str, bool], _WindowType] = {
    ("exact", False): ExactWindow,
    ("exact", True): ExactDistinct,
    ("approx", False): ApproxWindow,
    ("approx", True): ApproxDistinct,
}


class MemoryCounter:
    """Per-key windows for one rule, in two tiers of at most `spec.max_keys` keys each.

    `_once` holds the keys seen once as one number: the event's time (a float), or for a
    distinct counter a complex packing the time and the member's id. A ring of those keys in
    arrival order forgets the oldest once it is full. A key's second event turns it into a
    window object in `_windows`, an LRU cache (unless, for an exact window, the first event has
    left the window or had the same member: then it is one number again). A one-off client
    never reaches `_windows`, so a spray of addresses cannot evict a key with history.
    """

    __slots__ = ("_distinct", "_exact", "_hand", "_make", "_once", "_ring", "_windows", "spec")

    def __init__(self, spec: CounterSpec) -> None:
        self.spec = spec
        self._make = _WINDOWS[(spec.precision, spec.distinct)]
        self._distinct = spec.distinct
        self._exact = spec.precision == "exact"
        self._once: dict[str, float | complex] = {}
        self._ring: list[str] = []
        self._hand = 0
        self._windows: LRUCache[str, _Window] = LRUCache(maxsize=spec.max_keys)

    def add(self, key: str, now: float, member: str | None = None) -> int:
        window = self._windows.get(key)
        if window is not None:
            return window.add(now, self.spec.window, member)
        first = self._once.get(key)
        if first is None:
            self._remember(key, complex(now, _member_id(member)) if self._distinct else now)
            return 1
        window = self._make.seeded(self.spec.cap, first)
        count = window.add(now, self.spec.window, member)
        if count == 1 and self._exact:  # the first event left the window, or the same member again
            self._once[key] = complex(now, _member_id(member)) if self._distinct else now
        else:  # (an approx window remembers its previous bucket: it is kept whole)
            del self._once[key]
            self._windows[key] = window
        return count

    def peek(self, key: str, now: float) -> int:
        window = self._windows.get(key)
        if window is None:
            first = self._once.get(key)
            if first is None:
                return 0
            window = self._make.seeded(self.spec.cap, first)
        return window.peek(now, self.spec.window)

    def _remember(self, key: str, first: float | complex) -> None:
        ring = self._ring
        if len(ring) < self.spec.max_keys:
            ring.append(key)
        else:  # forget the oldest key seen once (the slot of a key since promoted frees nothing,
            # or forgets the key early if it has come back to this tier)
            hand = self._hand
            self._once.pop(ring[hand], None)
            ring[hand] = key
            self._hand = (hand + 1) % len(ring)
        self._once[key] = first

    def __len__(self) -> int:
        return len(self._once) + len(self._windows)


class MemoryBanTable:
    """Bans in a dict with an expiry heap; full means new bans are refused, never evicted."""

    def __init__(self, max_bans: int = MAX_BANS) -> None:
        self.max_bans = max_bans
        self.refused = 0
        self._bans: dict[str, Ban] = {}
        self._expiry: list[tuple[float, str]] = []
        self._prefix_counts: dict[tuple[int, int], int] = {}
        self._prefixes: dict[int, tuple[int, ...]] = {4: (), 6: ()}

    def get(self, key: str) -> Ban | None:
        return self._bans.get(key)

    def put(self, ban: Ban) -> bool:
        old = self._bans.get(ban.key)
        if old is None and len(self._bans) >= self.max_bans:
            self.refused += 1
            return False
        self._bans[ban.key] = ban
        heapq.heappush(self._expiry, (ban.until, ban.key))
        if old is None:
            self._count_prefix(ban.key, 1)
        if len(self._expiry) > 2 * len(self._bans) + 1024:
            self._expiry = [(b.until, b.key) for b in self._bans.values()]
            heapq.heapify(self._expiry)
        return True

    def pop(self, key: str) -> Ban | None:
        ban = self._bans.pop(key, None)
        if ban is not None:
            self._count_prefix(key, -1)
        return ban

    def expire(self, now: float) -> list[Ban]:
        expired: list[Ban] = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            until, key = heapq.heappop(heap)
            ban = self._bans.get(key)
            if ban is not None and ban.until == until:
                self.pop(key)
                expired.append(ban)
        return expired

    def prefixes(self, version: int) -> tuple[int, ...]:
        return self._prefixes.get(version, ())

    def all(self) -> list[Ban]:
        return sorted(self._bans.values(), key=lambda b: (b.until, b.key))

    def __len__(self) -> int:
        return len(self._bans)

    def _count_prefix(self, key: str, delta: int) -> None:
        if "/" not in key:
            return
        net = ipaddress.ip_network(key, strict=False)
        if net.prefixlen == net.max_prefixlen:
            return
        slot = (net.version, net.prefixlen)
        count = self._prefix_counts.get(slot, 0) + delta
        if count > 0:
            self._prefix_counts[slot] = count
        else:
            self._prefix_counts.pop(slot, None)
        self._prefixes[net.version] = tuple(
            sorted((p for v, p in self._prefix_counts if v == net.version), reverse=True)
        )


class MemoryStore:
    """The default Store: everything in this process (one worker)."""

    def __init__(self, max_bans: int = MAX_BANS, max_offenders: int = MAX_OFFENDERS) -> None:
        self.bans = MemoryBanTable(max_bans)
        self._counters: dict[str, MemoryCounter] = {}
        self._offences: LRUCache[str, tuple[int, float]] = LRUCache(maxsize=max_offenders)
        self.listener: Listener | None = None

    def counter(self, name: str, spec: CounterSpec) -> MemoryCounter:
        counter = self._counters.get(name)
        if counter is None or counter.spec != spec:
            counter = self._counters[name] = MemoryCounter(spec)
        return counter

    def retain(self, names: Iterable[str]) -> None:
        keep = set(names)
        for name in [n for n in self._counters if n not in keep]:
            del self._counters[name]

    def offend(self, key: str, now: float, memory: float) -> int:
        count, last = self._offences.get(key, (0, now))
        count = count + 1 if now - last <= memory else 1
        self._offences[key] = (count, now)
        return count

    def announce(self, kind: str, value: str) -> None:
        """Nothing to share: this process is the only one."""

    def start(self) -> None:
        """Nothing runs in the background."""

    async def close(self) -> None:
        """Nothing to flush."""

    def stats(self) -> dict[str, Any]:
        return {"backend": "memory"}
