"""Threat-intel lists: formats, CIDR membership at the edges, private peers, periodic reload."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import orjson
import pytest

from proxylog.config import ConfigError
from proxylog.config.reader import Node
from proxylog.config.rule_specs import IntelSpec
from proxylog.config.rules import parse_rules
from proxylog.net import CidrSet, network_range
from proxylog.rules import RequestFacts, RuleEngine
from proxylog.rules.intel import IntelList, parse_intel
from proxylog.testing import FakeClock

ROOT = Path(__file__).resolve().parents[2]
from tests.conftest import corpora_dir  # noqa: E402

SAMPLES = ROOT / "configs" / "intel"
VECTORS = corpora_dir() / "threat-intel"
LIST_FILES = {
    "firehol_level1": "firehol_level1.netset",
    "spamhaus_drop": "spamhaus_drop.txt",
    "spamhaus_edrop": "spamhaus_edrop.txt",
    "spamhaus_drop_ipv6": "spamhaus_drop_ipv6.txt",
}


def _facts(ip: str) -> RequestFacts:
    return RequestFacts(0.0, ip, "GET", "/", None, "Mozilla/5.0", frozenset(), "app.example.com")


def _contains(cidrs: CidrSet, ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return cidrs.contains(addr.version, int(addr))


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [
        ("netset", "# FireHOL\n#\n1.2.3.0/24\n5.6.7.8\n", ["1.2.3.0/24", "5.6.7.8/32"]),
        ("plain", "9.9.9.9\n\n10.0.0.0/8   # bogon\n", ["9.9.9.9/32", "10.0.0.0/8"]),
        (
            "spamhaus",
            "; Spamhaus DROP\n1.10.16.0/20 ; SBL256894\n1.19.0.0/16\n",
            ["1.10.16.0/20", "1.19.0.0/16"],
        ),
        ("spamhaus", "2a12:2640::/29 ; SBL535436\n", ["2a12:2640::/29"]),
        (
            "json",
            '{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}\n{"type":"metadata","records":1}\n',
            ["1.10.16.0/20"],
        ),
        (
            "auto",
            '# mixed\n1.2.3.4 ; SBL1\n{"cidr": "5.6.7.0/24"}\n::ffff:9.9.9.0/120\n',
            ["1.2.3.4/32", "5.6.7.0/24", "9.9.9.0/24"],
        ),
    ],
)
def test_list_formats(fmt: str, text: str, expected: list[str]) -> None:
    """netset, plain, Spamhaus (with or without `; SBLnnnn`) and JSON-lines lists all parse."""
    parsed = parse_intel(text.splitlines(), fmt)
    assert parsed.invalid == 0
    assert parsed.ranges == tuple(network_range(cidr) for cidr in expected)


def test_invalid_lines_are_counted_not_fatal() -> None:
    """Garbage lines are skipped and counted; host bits in a CIDR are ignored."""
    parsed = parse_intel(["1.2.3.4/24", "999.1.1.1", "1.2.3.4/40", "hello", "5.6.7.8"], "plain")
    assert parsed.invalid == 3
    assert parsed.ranges[0] == network_range("1.2.3.0/24")


@pytest.mark.skipif(not (VECTORS / "membership_vectors.jsonl").is_file(), reason="test corpora not found")
def test_membership_at_cidr_edges_matches_the_vectors() -> None:
    """All 6,292 in/out addresses at the edges of the sample lists' CIDRs are classified right."""
    sets = {
        name: CidrSet(parse_intel((SAMPLES / file).read_text().splitlines()).ranges)
        for name, file in LIST_FILES.items()
    }
    wrong = []
    lines = (VECTORS / "membership_vectors.jsonl").read_bytes().splitlines()
    for line in lines:
        vector = orjson.loads(line)
        if _contains(sets[vector["list"]], vector["ip"]) != vector["expected_in_list"]:
            wrong.append(vector)
    assert (len(lines), wrong) == (6292, [])


def test_overlapping_and_adjacent_ranges_merge() -> None:
    """Overlapping and adjacent networks merge into one range; lookups stay exact at the edges."""
    cidrs = CidrSet(network_range(c) for c in ["10.0.0.0/25", "10.0.0.128/25", "10.0.0.64/26", "10.0.2.0/24"])
    assert _contains(cidrs, "10.0.0.255") and _contains(cidrs, "10.0.2.0")
    assert not _contains(cidrs, "10.0.1.0") and not _contains(cidrs, "9.255.255.255")
    assert not _contains(cidrs, "::a00:1")  # the IPv6 space is separate


@pytest.mark.parametrize(
    "ip",
    ["10.1.2.3", "127.0.0.1", "192.168.1.1", "172.16.5.4", "100.64.0.1", "169.254.1.1", "::1", "fc00::1"],
)
def test_intel_never_blocks_private_or_loopback_peers(tmp_path: Path, ip: str) -> None:
    """FireHOL level1 lists bogons, yet LAN, loopback, CGNAT and ULA clients are never matched."""
    listed = tmp_path / "bogons.netset"
    bogons = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12"]
    listed.write_text("\n".join([*bogons, "192.168.0.0/16", "::1/128", "fc00::/7"]))
    spec = parse_rules(None, Node([{"name": "bogons", "file": str(listed)}], "intel"), None)
    assert not RuleEngine(spec, FakeClock()).check(_facts(ip)).block
    spec = parse_rules(
        None, Node([{"name": "bogons", "file": str(listed), "include_private": True}], "intel"), None
    )
    assert RuleEngine(spec, FakeClock()).check(_facts(ip)).block


def _write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_refresh_reloads_changed_files_when_due(tmp_path: Path) -> None:
    """A list is re-read only once its interval has passed and only if the file changed."""
    path = tmp_path / "list.txt"
    _write(path, "9.9.9.9\n", 1000)
    clock = FakeClock()
    spec = parse_rules(None, Node([{"name": "l", "file": str(path), "refresh": "10m"}], "intel"), None)
    engine = RuleEngine(spec, clock)
    engine.allow("127.0.0.1")  # unrelated generation bump must not confuse the cache
    assert engine.check(_facts("9.9.9.9")).block
    _write(path, "8.8.8.8\n", 2000)
    clock.advance(599)
    engine.refresh()
    assert engine.check(_facts("9.9.9.9")).block  # not due yet
    clock.advance(1)
    engine.refresh()
    assert not engine.check(_facts("9.9.9.9")).block
    assert engine.check(_facts("8.8.8.8")).block
    stats = engine.stats().intel
    assert stats["l"]["entries"] == 1  # type: ignore[index]


@pytest.mark.parametrize("damage", ["garbage only\n", None])
def test_a_broken_or_missing_file_keeps_the_old_entries(tmp_path: Path, damage: str | None) -> None:
    """A reload that finds no addresses, or no file, logs and keeps what was loaded."""
    path = tmp_path / "list.txt"
    _write(path, "9.9.9.9\n", 1000)
    spec = IntelSpec(name="l", file=str(path), refresh=1)
    lst = IntelList(spec, now=0.0)
    if damage is None:
        path.unlink()
    else:
        _write(path, damage, 2000)
    assert lst.refresh(5.0) is False
    assert (len(lst.cidrs), lst.errors) == (1, 1)


def test_a_first_load_failure_is_a_config_error(tmp_path: Path) -> None:
    """An intel file that holds no address at start-up is a ConfigError naming the list."""
    path = tmp_path / "list.txt"
    path.write_text("nothing here\n")
    spec = parse_rules(None, Node([{"name": "l", "file": str(path)}], "intel"), None)
    with pytest.raises(ConfigError) as info:
        RuleEngine(spec, FakeClock())
    assert info.value.path == "intel.l.file"


def test_a_reload_reuses_loaded_lists(tmp_path: Path) -> None:
    """A config reload with an unchanged intel spec keeps the loaded entries without re-reading."""
    path = tmp_path / "list.txt"
    path.write_text("9.9.9.9\n")
    spec = parse_rules(None, Node([{"name": "l", "file": str(path)}], "intel"), None)
    old = RuleEngine(spec, FakeClock())
    path.write_text("8.8.8.8\n")
    new = RuleEngine(spec, FakeClock(), previous=old)
    assert new.check(_facts("9.9.9.9")).block
