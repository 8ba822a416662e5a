"""The `inspect:` rule condition: parsed with clear errors, counted by the engine like any
rule, tagging `attack-<family>` with the score and CRS ids in the hit; bodies counted once."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxylog.config.reader import Node
from proxylog.config.rules import parse_rules
from proxylog.errors import ConfigError
from proxylog.record import RuleHit, Schema, encode_record
from proxylog.rules import RequestFacts, RuleEngine
from proxylog.testing import FakeClock, make_record
from tests._ecs import assert_ecs, flat

FORM = "application/x-www-form-urlencoded"


def engine(when: Any, **rule: Any) -> RuleEngine:
    spec = parse_rules(
        Node([{"id": "inspect", "when": when, "action": "block", **rule}], "rules"), None, None
    )
    return RuleEngine(spec, FakeClock())


def facts(query: str | None = None, method: str = "GET", ip: str = "198.51.100.7") -> RequestFacts:
    return RequestFacts(0.0, ip, method, "/search", query, "Mozilla/5.0", frozenset(), "shop.example")


def test_a_payload_is_blocked_and_tagged_with_score_and_ids() -> None:
    """A SQLi query blocks with 403, tags attack-sqli and the rule, and the hit carries the
    score and the CRS ids (the end-to-end test reads them back from the record)."""
    verdict = engine({"inspect": {"paranoia": 1}}).check(facts("id=1+union+select+1,2"))
    assert verdict.block and verdict.status == 403
    assert verdict.tags == ("attack-sqli", "inspect")
    hit = verdict.rules[0]
    assert hit.score is not None and hit.score >= 5 and "942190" in hit.matched


def test_benign_requests_pass() -> None:
    """An ordinary search is not counted."""
    assert not engine({"inspect": True}).check(facts("q=red+shoes")).rules


def test_exclude_ids_and_threshold() -> None:
    """Excluding the only matching id, or a threshold above the score, lets the request pass."""
    query = "q=<script>alert(1)</script>"
    scored = engine({"inspect": True}).check(facts(query)).rules[0].score or 0
    ids = [int(i) for i in engine({"inspect": True}).check(facts(query)).rules[0].matched]
    assert not engine({"inspect": {"exclude_ids": ids}}).check(facts(query)).block
    assert not engine({"inspect": {"threshold": scored + 1}}).check(facts(query)).block
    assert not engine({"inspect": {"families": ["sqli"]}}).check(facts(query)).block


def test_body_counts_once() -> None:
    """A SQLi body is counted at body time; a payload already seen in the query is not
    counted again when the body arrives; a clean body adds nothing."""
    e = engine({"inspect": True})
    post = facts(method="POST")
    assert not e.check(post).block
    assert e.check_body(post, b"user=admin'--&pw=x", FORM).block
    assert not e.check_body(post, b"user=admin&pw=x", FORM).rules
    query_hit = facts("id=1+union+select+1", method="POST", ip="198.51.100.8")
    assert e.check(query_hit).block
    assert not e.check_body(query_hit, b"user=admin'--", FORM).rules
    assert e.peek("inspect", "198.51.100.8") == 1


def test_body_over_the_limit_is_not_inspected() -> None:
    """Bodies larger than body_limit are left alone (never delayed for inspection)."""
    e = engine({"inspect": {"body_limit": 64}})
    assert e.body_limit == 64
    assert not e.check_body(facts(method="POST"), b"user=admin'--&pad=" + b"x" * 100, FORM).rules


@pytest.mark.parametrize(
    ("when", "key", "message"),
    [
        ({"inspect": {"paranoia": 5}}, "paranoia", "at most 4"),
        ({"inspect": {"families": ["sql"]}}, "families", "sqli"),
        ({"inspect": {"bogus": 1}}, "bogus", "bogus"),
        ({"inspect": False}, "inspect", "true or a mapping"),
    ],
)
def test_config_errors_name_the_key(when: Any, key: str, message: str) -> None:
    """A bad inspect: setting fails with its key path."""
    with pytest.raises(ConfigError) as e:
        engine(when)
    assert key in str(e.value) and message in str(e.value)


def test_unknown_excluded_id_is_a_config_error() -> None:
    """An excluded id the catalog lacks is refused, naming the rule and the key."""
    with pytest.raises(ConfigError, match=r"rules\.inspect\.when\.inspect\.exclude_ids.*942999"):
        engine({"inspect": {"exclude_ids": [942999]}})


@pytest.mark.parametrize("schema", ["nested", "flat"])
def test_the_deciding_inspection_rule_is_ecs_rule(schema: Schema) -> None:
    """A record an inspection rule decided names it in ECS `rule.*`: id, name and ruleset the
    proxylog rule, `category` the highest-scoring attack family, `description` the score and CRS ids; the
    document passes the ECS validator. A volume rule's record has no category."""
    verdict = engine({"inspect": {"paranoia": 1}}).check(facts("id=1+union+select+1,2&c=%3Cscript%3E"))
    record = make_record(query="id=1+union+select+1,2&c=%3Cscript%3E", rules=verdict.rules, tags=verdict.tags)
    doc = flat(orjson.loads(encode_record(record, schema)))
    assert_ecs(orjson.loads(encode_record(record, schema)))
    hit = verdict.rules[0]
    assert (doc["rule.id"], doc["rule.name"], doc["rule.ruleset"]) == ("inspect", "inspect", "proxylog")
    assert hit.families == ("xss", "sqli")  # xss scores 10 (941110, 941160), sqli 5
    assert doc["rule.category"] == "xss"
    assert doc["rule.description"] == f"anomaly score {hit.score}: {' '.join(hit.matched)} (xss, sqli)"
    assert "942190" in doc["rule.description"] and "941110" in doc["rule.description"]
    volume = make_record(rules=(RuleHit("probe", 3, 3, 60.0),))
    plain = flat(orjson.loads(encode_record(volume, schema)))
    assert plain["rule.id"] == "probe" and "rule.category" not in plain and "rule.description" not in plain
