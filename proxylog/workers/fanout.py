"""One answer from many workers: how the supervisor combines what each worker's control API
and metrics say into what one proxylog would have said."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families


def summed(answers: Sequence[Any]) -> Any:
    """Numbers added, mappings merged key by key (recursively), anything else the first
    worker's: `ctl stats` of N workers reads like one process's."""
    present = [a for a in answers if a is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, bool) or not isinstance(first, int | float | dict):
        return first
    if isinstance(first, int | float):
        numbers = [a for a in present if isinstance(a, int | float) and not isinstance(a, bool)]
        total = sum(numbers)
        return round(total, 6) if isinstance(total, float) else total
    keys = dict.fromkeys(k for a in present if isinstance(a, dict) for k in a)
    return {k: summed([a.get(k) for a in present if isinstance(a, dict)]) for k in keys}


def union_bans(answers: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every worker's bans as one list: a key banned in several workers once, with the
    latest end."""
    by_key: dict[str, dict[str, Any]] = {}
    for bans in answers:
        for ban in bans:
            seen = by_key.get(ban["key"])
            if seen is None or ban.get("until", 0) > seen.get("until", 0):
                by_key[ban["key"]] = ban
    return sorted(by_key.values(), key=lambda b: b.get("until", 0))


# Samples that do not add up across processes: the earliest start, the largest limit, one
# info line. Everything else (counters, histograms, queue depths, bytes, CPU) is a sum.
def _combine(name: str) -> Callable[[float, float], float]:
    if name.endswith("start_time_seconds"):
        return min
    if name.endswith(("_info", "max_fds")):
        return max
    return operator.add


class _Families:
    """A prometheus-client collector yielding already-built families."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merged_exposition(texts: Sequence[str], extra: Sequence[Metric] = ()) -> bytes:
    """Prometheus text from N workers' expositions as one: each sample (name and labels)
    combined across workers as `_combine` says, followed by the supervisor's own `extra`."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = samples.get(key)
                samples[key] = sample.value if old is None else _combine(sample.name)(old, sample.value)
    for name, merged in families.items():
        for (sample_name, labels), value in values[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*families.values(), *extra]))
    return generate_latest(registry)
