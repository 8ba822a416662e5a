"""Deadlines checked by a periodic sweep instead of one timer per request."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator


class Deadlines[K, V]:
    """Items that expire a fixed `timeout` after they are armed.

    Every entry gets the same timeout, so insertion order is deadline order and `expired()`
    only ever looks at the oldest entries: arming and disarming are O(1) dict operations,
    cheaper than a TimerHandle per request (whose cancelled handles linger in the loop's heap).
    """

    def __init__(self, timeout: Callable[[], float], clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout = timeout
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    def arm(self, key: K, item: V) -> None:
        """(Re)start `key`'s deadline; re-arming moves it to the end, keeping the order."""
        timeout = self._timeout()
        self._entries.pop(key, None)
        if timeout > 0:
            self._entries[key] = (self._clock() + timeout, item)

    def disarm(self, key: K) -> None:
        self._entries.pop(key, None)

    def expired(self) -> Iterator[V]:
        """Remove and yield every item whose deadline has passed."""
        now = self._clock()
        while self._entries:
            key, (deadline, item) = next(iter(self._entries.items()))
            if deadline > now:
                return
            del self._entries[key]
            yield item

    def pop_all(self) -> list[V]:
        """Remove and return every item, expired or not."""
        items = [item for _, item in self._entries.values()]
        self._entries.clear()
        return items

    def __len__(self) -> int:
        return len(self._entries)
