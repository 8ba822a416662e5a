"""A request refused by an existing ban says which rule's ban refused it, in ECS `rule.*`."""

from __future__ import annotations

import pytest

from tests._ecs import assert_ecs
from tests._http import request
from tests.alerts.test_alerts_e2e import PROBES, RULES


@pytest.mark.parametrize("enforce", [True, False], ids=["enforce", "monitor"])
def test_a_banned_clients_request_names_the_bans_rule(start_proxylog, enforce: bool) -> None:
    """After `probing` bans the client, a plain `/hello` (which no rule matches) is blocked
    (or would be, in monitor mode) by the ban: its record carries `rule.*` of `probing`, and
    stays ECS; a request before the ban carries no `rule`."""
    proxy = start_proxylog({"rules": RULES}, args=["--enforce"] if enforce else [])
    assert request(proxy.url, "/hello").status == 200
    assert [request(proxy.url, path).status for path in PROBES] == [200, 200, 403 if enforce else 200]
    assert request(proxy.url, "/hello").status == (403 if enforce else 200)
    before, _, _, fired, banned = proxy.access(5)
    assert "rule" not in before
    assert fired["rule"] == {"id": "probing", "name": "probing", "ruleset": "proxylog"}
    assert banned["url"]["path"] == "/hello" and "rules" not in banned["proxylog"]
    assert banned["event"]["action"] == ("blocked" if enforce else "would_block")
    assert banned["rule"] == {"id": "probing", "name": "probing", "ruleset": "proxylog"}
    for record in (before, fired, banned):
        assert_ecs(record)
