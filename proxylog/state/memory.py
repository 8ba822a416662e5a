"""The in-process Store: sliding windows in bounded cachetools caches, bans in their own table.

Counters are LRU caches of at most `max_keys` keys, so a flood of distinct clients costs a
bounded amount of memory (it only makes the oldest counters forget). Bans live apart in a
table that never evicts, so memory pressure can never unban anyone.
"""

from __future__ import annotations

import bisect
import heapq
import ipaddress
import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from cachetools import LRUCache

from proxylog.state import Ban, CounterSpec, Listener

MAX_BANS = 250_000
MAX_OFFENDERS = 100_000


class _Window(Protocol):
    def add(self, now: float, window: float, member: str | None) -> int: ...

    def peek(self, now: float, window: float) -> int: ...


class ExactWindow:
    """The last `cap` event times, oldest first: an exact sliding count up to `cap`. A list,
    not a deque: most keys hold one or two times, and a deque always allocates 64 slots."""

    __slots__ = ("cap", "times")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.times: list[float] = []

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
    """The last `cap` distinct members with when each was last seen: an exact distinct count."""

    __slots__ = ("cap", "seen")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen: dict[str, float] = {}

    def add(self, now: float, window: float, member: str | None) -> int:
        seen = self.seen
        key = member or ""
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
    """Two buckets of distinct members (each capped at `cap`), weighted like ApproxWindow."""

    __slots__ = ("cap", "current", "overlap", "previous", "start")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.start = -math.inf
        self.current: set[str] = set()
        self.previous: set[str] = set()
        self.overlap = 0  # members of `current` also in `previous`

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
        key = member or ""
        if key not in self.current and len(self.current) < self.cap:
            self.current.add(key)
            if key in self.previous:
                self.overlap += 1
        return self.peek(now, window)

    def peek(self, now: float, window: float) -> int:
        self._roll(now, window)
        weight = max(0.0, 1.0 - (now - self.start) / window)
        return len(self.current) + int((len(self.previous) - self.overlap) * weight)


_WINDOWS: dict[tuple[str, bool], Callable[[int], _Window]] = {
    ("exact", False): ExactWindow,
    ("exact", True): ExactDistinct,
    ("approx", False): ApproxWindow,
    ("approx", True): ApproxDistinct,
}


class MemoryCounter:
    """Per-key windows in an LRU cache of at most `spec.max_keys` keys."""

    __slots__ = ("_keys", "_make", "spec")

    def __init__(self, spec: CounterSpec) -> None:
        self.spec = spec
        self._make = _WINDOWS[(spec.precision, spec.distinct)]
        self._keys: LRUCache[str, _Window] = LRUCache(maxsize=spec.max_keys)

    def add(self, key: str, now: float, member: str | None = None) -> int:
        try:
            window = self._keys[key]  # (LRUCache.get would look the key up twice)
        except KeyError:
            window = self._keys[key] = self._make(self.spec.cap)
        return window.add(now, self.spec.window, member)

    def peek(self, key: str, now: float) -> int:
        window = self._keys.get(key)
        return 0 if window is None else window.peek(now, self.spec.window)

    def __len__(self) -> int:
        return len(self._keys)


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
