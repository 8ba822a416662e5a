"""The runtime's upkeep gives freed heap memory back to the system."""

from __future__ import annotations

import os

import pytest

from proxylog.config import Config
from proxylog.runtime import MALLOC_TRIM, Runtime
from proxylog.testing import MemorySink


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(MALLOC_TRIM is None, reason="not glibc: no malloc_trim")
async def test_upkeep_returns_memory_freed_after_a_burst() -> None:
    """What a burst of connections leaves in the C heap once freed (many heap blocks of a few
    KiB, with small live objects among them so glibc cannot return it by itself) is given
    back by one upkeep tick: the resident size drops by most of it."""
    runtime = Runtime(Config(), sinks=[MemorySink()])
    burst: list[bytes] = []
    survivors: list[bytes] = []
    for n in range(24_000):  # about 96 MiB
        burst.append(bytes(4096))
        if n % 64 == 0:
            survivors.append(bytes(600))  # from the same C heap: it cannot shrink by itself
    burst.clear()
    before = _rss()
    await runtime.tick()
    assert before - _rss() > 48 * 2**20
    assert survivors
