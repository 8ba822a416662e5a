"""Request inspection end to end: a real proxylog in enforce mode in front of real Puma."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest

from tests._ecs import assert_ecs
from tests._http import request
from tests.conftest import Puma

pytestmark = pytest.mark.e2e

RULES = [{"id": "inspect", "when": {"inspect": {"paranoia": 1}}, "action": "block"}]
FORM = [("Content-Type", "application/x-www-form-urlencoded")]
BENIGN = Path(__file__).resolve().parent.parent / "data" / "inspect" / "benign_forms.jsonl"


def test_sqli_body_is_blocked_before_puma_and_benign_posts_pass(start_proxylog, puma: Puma) -> None:
    """A SQLi form body gets 403 and never reaches Puma; a query payload too; the benign
    form and JSON posts all pass; the record names the score and CRS ids under proxylog.rules
    and the deciding proxylog rule in ECS `rule.*` (the attack family as its category), and
    every record passes the ECS validator."""
    prefix = "/" + uuid.uuid4().hex[:12]
    proxy = start_proxylog({"rules": RULES}, args=["--enforce"])
    attack = request(
        proxy.url, f"{prefix}/login", method="POST", headers=FORM, body=b"user=admin'--&password=x"
    )
    assert attack.status == 403
    assert request(proxy.url, f"{prefix}/items?id=1+UNION+SELECT+password+FROM+users--").status == 403
    docs = [orjson.loads(line) for line in BENIGN.read_bytes().splitlines()]
    posts = [d for d in docs if d["body"]]
    for n, doc in enumerate(posts):
        headers = [(k, v) for k, v in doc["headers"].items()]
        path = f"{prefix}/ok{n}"
        answer = request(proxy.url, path, method="POST", headers=headers, body=doc["body"].encode())
        assert answer.status == 200, doc
    assert puma.seen(prefix) == [f"{prefix}/ok{n}" for n in range(len(posts))]
    records = {r["url"]["path"]: r for r in proxy.access(count=len(posts) + 2)}
    blocked = records[f"{prefix}/login"]
    assert blocked["event"]["action"] == "blocked"
    assert "attack-sqli" in blocked["tags"]
    hit = blocked["proxylog"]["rules"][0]
    assert hit["score"] >= 5 and "942440" in hit["matched"]
    rule = blocked["rule"]
    assert (rule["id"], rule["name"], rule["ruleset"]) == ("inspect", "inspect", "proxylog")
    assert rule["category"] == "sqli"
    assert "942440" in rule["description"]
    assert "rule" not in records[f"{prefix}/ok0"]
    for record in records.values():
        assert_ecs(record)


def test_monitor_mode_tags_the_body_for_puma(start_proxylog, puma: Puma) -> None:
    """In monitor mode a SQLi body is forwarded with X-Proxylog-Tags naming the family."""
    prefix = "/" + uuid.uuid4().hex[:12]
    proxy = start_proxylog({"rules": RULES, "mode": "monitor"})
    answer = request(
        proxy.url, f"{prefix}/login", method="POST", headers=FORM, body=b"user=admin'--&password=x"
    )
    assert answer.status == 200
    assert "attack-sqli" in answer.json()["headers"]["HTTP_X_PROXYLOG_TAGS"].split(",")
    record = proxy.access(count=1)[0]
    assert record["event"]["action"] == "would_block"
