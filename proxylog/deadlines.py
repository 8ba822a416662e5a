"""Deadlines checked by one periodic sweep instead of a timer per connection or request."""

from __future__ import annotations

import time
from collections.abc import Callable


class Deadlines[K]:
    """Keys that expire `timeout` seconds after they are armed (a timeout <= 0 arms nothing).

    Keys armed under one timeout share it, so insertion order is deadline order: arming and
    disarming are O(1) dict operations and a sweep looks only at the entries that expired,
    where a TimerHandle per key costs a heap push and leaves cancelled handles behind.
    `retune` (a reload changed the timeout) starts a new generation: keys armed before keep
    their deadlines in the old one, which is swept too until it is empty, so a shorter new
    timeout never queues behind longer old deadlines.
    """

    __slots__ = ("_clock", "_current", "_old", "timeout")

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._clock = clock
        self._current: dict[K, float] = {}
        self._old: list[dict[K, float]] = []

    def retune(self, timeout: float) -> None:
        """Arm keys with `timeout` from now on; those armed already keep their deadlines."""
        if timeout != self.timeout:
            self.timeout = timeout
            if self._current:
                self._old.append(self._current)
                self._current = {}

    def arm(self, key: K) -> None:
        """(Re)start `key`'s deadline; re-arming moves it to the end, keeping the order."""
        self.disarm(key)
        if self.timeout > 0:
            self._current[key] = self._clock() + self.timeout

    def disarm(self, key: K) -> None:
        if self._current.pop(key, None) is None and self._old:
            for entries in self._old:
                entries.pop(key, None)

    def __contains__(self, key: K) -> bool:
        return key in self._current or any(key in entries for entries in self._old)

    def __len__(self) -> int:
        return len(self._current) + sum(map(len, self._old))

    def expired(self, now: float | None = None) -> list[K]:
        """Remove and return every key whose deadline is at or before `now` (default: the
        clock), oldest generation first."""
        now = self._clock() if now is None else now
        out: list[K] = []
        for entries in (*self._old, self._current):
            due = []
            for key, deadline in entries.items():
                if deadline > now:
                    break
                due.append(key)
            for key in due:
                del entries[key]
            out += due
        self._old = [entries for entries in self._old if entries]
        return out

    def clear(self) -> list[K]:
        """Remove and return every key, expired or not."""
        keys = [key for entries in (*self._old, self._current) for key in entries]
        self._current, self._old = {}, []
        return keys
