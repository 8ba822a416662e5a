"""`proxylog replay --inspect-paranoia N`: per-family inspection hits at the configured level
and at N, and the top values N adds, redacted as records are; on real log lines."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest
import yaml

from proxylog.cli import main
from proxylog.rules.inspect.explain import explain
from proxylog.rules.sources import facts_from_combined, facts_from_corpus
from tests.rules.test_corpora import DATA, REAL_LOG

ROOT = Path(__file__).resolve().parents[2]
INSPECT_PACK = ROOT / "configs" / "rules" / "inspect.yaml"
HUB_REQUESTS = DATA / "crowdsec-hub" / "requests.jsonl"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
XSS_PATH = "/?q=%3CIMG%20SRC=javascript:alert('XSS')%3E"

pytestmark = pytest.mark.skipif(not REAL_LOG.is_file(), reason=f"test corpora not found under {DATA}")


def _lines(path: Path, keep: int | None = None, contains: str = "") -> list[str]:
    with path.open(encoding="utf-8") as f:
        chosen = (line for line in f if contains in line)
        return [line.rstrip("\n") for line in itertools.islice(chosen, keep)]


@pytest.fixture
def mixed_log(tmp_path: Path) -> Path:
    """200 real Apache requests, the VMware template-injection exploit lines of CrowdSec's
    hub tests and PayloadsAllTheThings' ``<img src=javascript:…>`` XSS (a paranoia-2 match),
    all from the corpora CI has (the bundled tests/data/corpora.tar.gz included)."""
    # Two of PayloadsAllTheThings' XSS lists carry this payload (RSnake's and a detection
    # list); written here as that corpus writes a request.
    xss = orjson.dumps({"method": "GET", "path": XSS_PATH, "headers": {}, "body": None}).decode()
    attacks = [*_lines(HUB_REQUESTS, contains="vmware-cve-2022-22954"), xss, xss]
    assert len(attacks) == 4
    lines = _lines(REAL_LOG, 200) + [
        orjson.dumps({**orjson.loads(line), "client_ip": f"203.0.113.{n}", "ts": 1_700_000_000 + n}).decode()
        for n, line in enumerate(attacks, 1)
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_paranoia_two_shows_per_family_hits_and_what_it_adds(
    mixed_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table names the configured rule and both levels; the PL2-only template-delimiter
    rule (934181) shows the exploit's decoded argument, with the rule id to exclude."""
    argv = [
        "replay",
        str(mixed_log),
        "--rules",
        str(INSPECT_PACK),
        "--inspect-paranoia",
        "2",
        "--events",
        "none",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    tuning = out[out.index("\ninspection: ") :]
    assert "inspection: paranoia 1 (attack-payload) vs paranoia 2, threshold 5" in tuning
    assert "FAMILY                  PL1      PL2     ADDS" in tuning
    assert '934181 arg:deviceUdid ${"freemarker.template.utility.execute"?new()' in tuning
    assert "941320 arg:q <img src=javascript:alert('xss')>" in tuning
    rows = {line.split()[0]: line.split()[1:] for line in tuning.splitlines()[2:] if not line.startswith(" ")}
    assert int(rows["xss"][1]) >= int(rows["xss"][0]) >= 0


def test_json_has_an_inspection_line_before_the_summary(
    mixed_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json adds one ``inspection`` object (per family: hits at both levels, what changed,
    the top values); the summary stays the last line."""
    argv = ["replay", str(mixed_log), "--rules", str(INSPECT_PACK), "--inspect-paranoia", "2", "--json"]
    assert main(argv) == 0
    docs = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert docs[-1]["type"] == "summary"
    (inspection,) = (d for d in docs if d["type"] == "inspection")
    assert (inspection["rule"], inspection["paranoia"], inspection["compared_with"]) == (
        "attack-payload",
        1,
        2,
    )
    assert inspection["requests"] == docs[-1]["requests"]
    xss = inspection["families"]["xss"]
    assert xss["compared_hits"] >= xss["hits"]
    assert {"value": "941320 arg:q <img src=javascript:alert('xss')>", "count": 2} in xss["top_values"]
    assert inspection["compared_hits"] >= inspection["hits"]


def test_secrets_inside_matched_values_are_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A matched value holding a JWT or an AWS key, or under a secret parameter name, is
    printed redacted by the config's Redactor: not as sent, not lower-cased, not decoded."""
    real = facts_from_corpus(orjson.loads(_lines(REAL_LOG, 1)[0])).facts
    agent = real.user_agent
    requests = [
        f"GET /search?q=%3Cimg+src%3Dx+data-t%3D{JWT}%3E HTTP/1.1",
        f"GET /search?q=%3Cimg+src%3Dx+alt%3D{AWS_KEY}%3E HTTP/1.1",
        "GET /login?password=%3Cimg%20src%3Dx%20alt%3Dhunter2secret%3E HTTP/1.1",
    ]
    lines = [
        f'{real.client_ip} - - [17/May/2015:10:05:0{n} +0000] "{request}" 200 512 "-" "{agent}"'
        for n, request in enumerate(requests)
    ]
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines) + "\n")
    assert all(facts_from_combined(line) for line in lines)
    config = tmp_path / "proxylog.yaml"
    config.write_text(yaml.safe_dump({"rules": [{"include": str(INSPECT_PACK)}]}))
    assert (
        main(["replay", str(log), "--config", str(config), "--inspect-paranoia", "2", "--events", "none"])
        == 0
    )
    out = capsys.readouterr().out
    tuning = out[out.index("\ninspection: ") :]
    for secret in (JWT[:20], AWS_KEY, "hunter2secret"):
        assert secret.lower() not in tuning.lower()
    assert "941320 arg:q <img src=x data-t=[REDACTED]>" in tuning
    assert "941320 arg:q <img src=x alt=[REDACTED]>" in tuning
    assert "941320 arg:password [REDACTED]" in tuning
    assert tuning.count("[REDACTED]") >= 3


def test_explain_names_the_value_each_id_matched() -> None:
    """`explain` finds, for each pattern id, the request part, the name and the span in the
    transformed value (the CRS "matched data")."""
    (line,) = _lines(HUB_REQUESTS, 1, contains="deviceUdid=%24%7b")
    facts = facts_from_corpus(orjson.loads(line)).facts
    (match,) = explain(facts, [934181, 920230])  # a check has no pattern: skipped
    assert (match.id, match.part, match.name) == (934181, "a", "deviceUdid")
    assert match.form[match.start : match.end].startswith('${"freemarker.template.utility.execute"')
    assert match.raw.startswith("%24%7b%22")


def test_without_an_inspecting_rule_the_baseline_is_none(
    mixed_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no rule that inspects (and no rules at all), --inspect-paranoia still runs: what
    inspection at N would tag, against nothing."""
    assert main(["replay", str(mixed_log), "--inspect-paranoia", "1", "--events", "none"]) == 0
    out = capsys.readouterr().out
    assert "inspection: no inspecting rule vs paranoia 1, threshold 5: 0 → " in out
    assert "934181" not in out  # a paranoia-2 rule


def test_real_traffic_alone_reaches_the_threshold_at_neither_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2,000 lines of the real Apache log: nothing at paranoia 1 or 2, and the table says so."""
    log = tmp_path / "real.jsonl"
    log.write_text("\n".join(_lines(REAL_LOG, 2000)) + "\n")
    assert (
        main(
            ["replay", str(log), "--rules", str(INSPECT_PACK), "--inspect-paranoia", "2", "--events", "none"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "threshold 5: 0 → 0 of 2,000 requests" in out
    assert "(no request reaches the threshold at either level)" in out
