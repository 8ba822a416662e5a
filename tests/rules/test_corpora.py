"""The default rule pack against public corpora: CrowdSec's scenario tests and real Apache logs.

Detection: CrowdSec's hub test logs, replayed per (test, client IP) with the timestamps of the
original log lines, must reproduce the bans CrowdSec expects in the categories the pack
covers. False positives: the scenario negatives, the app-whitelist lines and a real Apache
log must not be banned where the traffic is benign. benchmarks/detection.py prints the tables.
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxylog.config.reader import Node
from proxylog.config.rule_specs import RulesSpec
from proxylog.config.rules import parse_rules
from proxylog.rules import RuleEngine
from proxylog.rules.replay import ReplayReport, replay
from proxylog.rules.sources import Entry, facts_from_corpus

ROOT = Path(__file__).resolve().parents[2]
from tests.conftest import corpora_dir  # noqa: E402

DATA = corpora_dir()
HUB = DATA / "crowdsec-hub"
REAL_LOG = DATA / "real-access-logs" / "elastic-apache" / "requests.jsonl"
DEFAULT_PACK = ROOT / "configs" / "rules" / "default.yaml"
CHEF_CLIENT = "208.91.156.11"

pytestmark = pytest.mark.skipif(not HUB.is_dir(), reason=f"test corpora not found under {DATA}")

_CLF = re.compile(r"\[(\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2})(?:\.\d+)? ([+-]\d{4})\]")
_ISO = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|[+-]\d{2}:?\d{2})?")
_ERROR_LOG = re.compile(r"(\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2})")


def default_pack() -> RulesSpec:
    """The default rule pack as a config would include it."""
    return parse_rules(Node([{"include": str(DEFAULT_PACK)}], "rules"), None, None)


@functools.cache
def _raw_lines(path: str) -> list[str]:
    return (HUB / "raw" / path).read_text(encoding="utf-8", errors="replace").split("\n")


def line_timestamp(text: str) -> float | None:
    """The time on a raw log line: CLF ``[29/Sep/2021:12:37:05 +0000]``, ISO 8601, or an nginx
    error log's ``2021/09/30 09:23:53``."""
    if match := _CLF.search(text):
        return datetime.strptime(f"{match[1]} {match[2]}", "%d/%b/%Y:%H:%M:%S %z").timestamp()
    if match := _ISO.search(text):
        zone = "+0000" if match[3] in (None, "Z") else match[3].replace(":", "")
        return datetime.strptime(f"{match[1]} {match[2]} {zone}", "%Y-%m-%d %H:%M:%S %z").timestamp()
    if match := _ERROR_LOG.search(text):
        return datetime.strptime(match[1], "%Y/%m/%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
    return None


def hub_timestamp(source: str) -> float | None:
    """The timestamp of the raw log line a hub corpus line came from (``repo@sha:path:line``)."""
    path, _, line = source.split(":", 1)[1].rpartition(":")
    lines = _raw_lines(path)
    index = int(line) - 1
    return line_timestamp(lines[index]) if 0 <= index < len(lines) else None


@dataclass
class Group:
    """The lines of one (test, client IP) pair, in log order, with CrowdSec's expectation."""

    test: str
    client_ip: str
    label: str
    category: str
    scenarios: tuple[str, ...]
    entries: list[Entry] = field(default_factory=list)


def load_hub(names: Iterable[str] = ("requests.jsonl", "scenario_negatives.jsonl")) -> list[Group]:
    """Hub corpus lines grouped by (test, client IP, label); a line without a recoverable time
    follows the previous line of its group by one second."""
    groups: dict[tuple[str, str, str], Group] = {}
    for name in names:
        for raw in (HUB / name).read_bytes().splitlines():
            doc: dict[str, Any] = orjson.loads(raw)
            slot = (doc["test"], doc["client_ip"], doc["label"])
            group = groups.get(slot)
            if group is None:
                category = doc["category"].removeprefix("negative-for-")
                group = groups[slot] = Group(
                    doc["test"],
                    doc["client_ip"],
                    doc["label"],
                    category,
                    tuple(doc.get("expected_scenarios") or ()),
                )
            ts = hub_timestamp(doc["source"])
            if ts is None:
                ts = group.entries[-1].facts.ts + 1 if group.entries else 1_600_000_000.0
            group.entries.append(
                facts_from_corpus(doc, ts) if doc.get("ts") is None else facts_from_corpus(doc)
            )
    return list(groups.values())


@dataclass
class Outcome:
    """What the pack did to one group: its bans, blocks and tags."""

    group: Group
    report: ReplayReport

    @property
    def banned(self) -> bool:
        return any(e.kind == "ban" for e in self.report.events)

    @property
    def blocked(self) -> bool:
        return self.report.would_block > 0

    @property
    def tagged(self) -> bool:
        return bool(self.report.tagged)

    @property
    def ban_rules(self) -> list[str]:
        return sorted({e.rule for e in self.report.events if e.kind == "ban"})

    @property
    def verdict(self) -> str:
        if self.banned:
            return "banned"
        if self.blocked:
            return "blocked"
        return "tagged" if self.tagged else "missed"


def evaluate(groups: Iterable[Group], spec: RulesSpec) -> list[Outcome]:
    """Each group replayed through its own engine (intel lists loaded once)."""
    template = RuleEngine(spec)
    return [Outcome(g, replay(g.entries, spec, template=template)) for g in groups]


def real_traffic(spec: RulesSpec) -> ReplayReport:
    """The real Apache log replayed by timestamp (its lines are not in time order)."""
    entries = [facts_from_corpus(orjson.loads(line)) for line in REAL_LOG.read_bytes().splitlines()]
    return replay(entries, spec)


@pytest.fixture(scope="module")
def hub_outcomes() -> list[Outcome]:
    return evaluate(load_hub(), default_pack())


@pytest.fixture(scope="module")
def real_report() -> ReplayReport:
    return real_traffic(default_pack())


def by_category(outcomes: Iterable[Outcome]) -> dict[str, collections.Counter[str]]:
    table: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for outcome in outcomes:
        table[outcome.group.category][outcome.verdict] += 1
    return table


# Categories the default pack is built to catch, and how many of CrowdSec's expected bans
# (one per attacking (test, IP) group) it must reproduce as a ban or a request-time block.
EXPECTED_MINIMUM = {
    "probe-4xx": 4,  # of 4
    "sensitive-file": 5,  # of 5
    "traversal": 2,  # of 2
    "sqli": 1,  # of 1
    "xss": 1,  # of 1
    "scanner-ua": 7,  # of 7
    "backdoor": 1,  # of 1
    "crawl": 1,  # of 1
    "bruteforce": 3,  # of 6: the others need request bodies or WordPress-specific rules
    "admin-probe": 1,  # of 2: SAP paths are not in @admin-paths
    "probe": 3,  # of 7: CVE URIs and WordPress admin paths; the rest are one or two requests
    "dos": 5,  # of 8: cache bypass and random URIs; invalid HTTP versions never reach a proxy's hooks
}


def test_hub_timestamps_are_recovered_for_nearly_every_line() -> None:
    """The raw hub logs give a time for all but a handful of corpus lines."""
    groups = load_hub()
    lines = sum(len(g.entries) for g in groups)
    assert lines == 921 + 157


@pytest.mark.parametrize(("category", "minimum"), sorted(EXPECTED_MINIMUM.items()))
def test_hub_attacks_are_banned_per_category(
    hub_outcomes: list[Outcome], category: str, minimum: int
) -> None:
    """In each covered category, at least the stated number of attacking groups is stopped."""
    outcomes = [o for o in hub_outcomes if o.group.label == "attack" and o.group.category == category]
    stopped = [o for o in outcomes if o.verdict in ("banned", "blocked")]
    assert len(stopped) >= minimum, [(o.group.test, o.group.client_ip, o.verdict) for o in outcomes]


def test_hub_negatives_and_whitelisted_apps_are_never_banned(hub_outcomes: list[Outcome]) -> None:
    """No scenario-negative IP and no app-whitelist traffic is banned or blocked."""
    benign = [o for o in hub_outcomes if o.group.label == "benign"]
    assert len(benign) == 27
    wrong = [
        (o.group.test, o.group.client_ip, o.ban_rules) for o in benign if o.verdict in ("banned", "blocked")
    ]
    assert wrong == []


def test_real_traffic_does_not_ban_the_chef_client(real_report: ReplayReport) -> None:
    """The Chef client that fetches a missing file hourly (60 404s) is never banned or blocked."""
    banned = {e.key for e in real_report.events if e.kind == "ban"}
    assert CHEF_CLIENT not in banned


def test_real_traffic_bans_only_probers(real_report: ReplayReport) -> None:
    """Every ban on the real log hits a client that probed for admin pages or missing paths."""
    bans = {e.key: e.rule for e in real_report.events if e.kind == "ban"}
    assert set(bans.values()) <= {"admin-probes", "probing"}
    assert len(bans) <= 6
