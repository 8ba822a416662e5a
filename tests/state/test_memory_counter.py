"""The memory store's two-tier counters: one-off keys are cheap and go first, keys with
history survive a spray, and the tiers count exactly as one window per key would."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxylog.state import CounterSpec, Precision
from proxylog.state.memory import ApproxDistinct, ApproxWindow, ExactDistinct, ExactWindow, MemoryCounter

ROOT = Path(__file__).resolve().parents[2]
WINDOWS = {
    ("exact", False): ExactWindow,
    ("exact", True): ExactDistinct,
    ("approx", False): ApproxWindow,
    ("approx", True): ApproxDistinct,
}


def _spec(
    precision: Precision = "exact", distinct: bool = False, cap: int = 5, max_keys: int = 1000
) -> CounterSpec:
    return CounterSpec(window=60.0, precision=precision, distinct=distinct, cap=cap, max_keys=max_keys)


@pytest.mark.parametrize("distinct", [False, True])
def test_a_spray_of_one_off_keys_does_not_flush_a_key_with_history(distinct: bool) -> None:
    """Five times `max_keys` one-off keys pass between a key's second and third events: the
    one-off keys are forgotten, oldest first, and the key with history still counts 3."""
    counter = MemoryCounter(_spec(distinct=distinct, max_keys=1000))
    assert counter.add("scanner", 0.0, "/a") == 1
    assert counter.add("scanner", 1.0, "/b") == 2
    for n in range(5000):
        counter.add(f"10.0.{n >> 8}.{n & 255}", 2.0, "/x")
    assert counter.add("scanner", 3.0, "/c") == 3
    assert len(counter) == 1001
    assert counter.peek("10.0.0.0", 3.0) == 0  # the oldest one-off keys went first
    assert counter.peek("10.0.19.135", 3.0) == 1  # the newest are kept


def test_a_one_off_key_costs_under_200_bytes() -> None:
    """A key seen once is one dict entry and one number (and its ring slot): measured with
    tracemalloc over 50,000 keys, key strings included."""
    for spec in (_spec(), _spec(distinct=True), _spec("approx")):
        counter = MemoryCounter(_spec(spec.precision, spec.distinct, max_keys=100_000))
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        keys = [f"203.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" for n in range(50_000)]
        for key in keys:
            counter.add(key, 0.0, "/missing")
        keys.clear()  # the counter holds the only references to the key strings now
        per_key = (tracemalloc.get_traced_memory()[0] - before) / 50_000
        tracemalloc.stop()
        assert per_key <= 200, (spec, per_key)


def test_a_key_whose_first_event_left_the_window_stays_a_one_off() -> None:
    """A second event after the window starts over at 1 (no window object is built), and a
    distinct counter's repeat of the same member is still one."""
    counter = MemoryCounter(_spec())
    counter.add("k", 0.0)
    assert counter.add("k", 61.0) == 1
    assert counter.add("k", 62.0) == 2
    distinct = MemoryCounter(_spec(distinct=True))
    assert distinct.add("k", 0.0, "/a") == 1
    assert distinct.add("k", 1.0, "/a") == 1
    assert distinct.add("k", 2.0, "/b") == 2
    assert distinct.add("k", 3.0, "/a") == 2  # the first member is known by its id, not lost


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(WINDOWS)),
    events=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=200, allow_nan=False),
            st.sampled_from("abc"),
            st.sampled_from(["/a", "/b", "/c", "/d"]),
        ),
        min_size=1,
        max_size=60,
    ),
    cap=st.integers(min_value=1, max_value=6),
)
def test_the_tiers_count_exactly_as_one_window_per_key(
    kind: tuple[str, bool], events: list[tuple[float, str, str]], cap: int
) -> None:
    """Through its two tiers a counter gives, event by event, the counts a window object per
    key gives (with room for every key, so nothing is forgotten); `peek` agrees too."""
    events.sort()
    precision, distinct = kind
    counter = MemoryCounter(_spec(precision, distinct, cap=cap, max_keys=10))
    reference: dict[str, object] = {}
    for now, key, member in events:
        window = reference.setdefault(key, WINDOWS[kind](cap))
        expected = window.add(now, 60.0, member)
        assert counter.add(key, now, member) == expected
        for other, w in reference.items():
            assert counter.peek(other, now) == w.peek(now, 60.0)


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_a_million_address_spray_stays_under_200_mb_and_the_scanner_is_still_banned() -> None:
    """A million one-off addresses, each one 404, through the plane-neutral pipeline with the
    default pack in enforce mode (its own process, so the resident memory is the spray's):
    RSS grows by at most 200 MB, and a scanner whose requests are 110,000 addresses apart
    (more than a rule tracks) is banned by `probing` at its threshold, its 11th request."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.rules._spray", "--addresses", "1000000", "--every", "110000"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=580,
    )
    result = orjson.loads(out.stdout)
    assert result["banned_at"] == result["threshold"] == 11
    assert result["rss_growth"] <= 200 * 2**20, result
    assert result["keys"]["probing"] == 100_001  # 100,000 one-off keys and the scanner's
