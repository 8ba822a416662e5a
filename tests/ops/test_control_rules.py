"""Operating the rules live, through real sockets: mode toggles under load, bans, reloads, alerts."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import yaml

from proxylog.cli.ctl import ControlClient
from tests._http import request
from tests.conftest import ROOT, Puma
from tests.ops.test_control import ctl, ctl_json, documents, rewrite_config, wait_until
from tests.ops.test_control import receiver as receiver  # the fixture, re-exported

ALWAYS = [{"id": "always", "when": {"path": "^/always"}, "threshold": 1, "window": "60s", "action": "block"}]


def test_toggling_the_mode_under_load_is_consistent_and_audited(start_proxylog, puma: Puma) -> None:
    """100 live toggles while requests flow: each request is evaluated under exactly one mode
    (blocked in enforce, served in monitor), and each toggle leaves an audit record."""
    proxy = start_proxylog({"rules": ALWAYS})
    client = ControlClient(socket_path=str(proxy.control_socket))
    tag = uuid.uuid4().hex[:8]
    stop = threading.Event()
    results: list[tuple[str, int]] = []

    def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            path = f"/always/{tag}/{worker}-{n}"
            results.append((path, request(proxy.url, path).status))
            n += 1

    workers = [threading.Thread(target=load, args=(i,)) for i in range(3)]
    for worker in workers:
        worker.start()
    try:
        for i in range(100):
            status, answer = client.call("POST", "/mode", {"mode": "enforce" if i % 2 == 0 else "monitor"})
            assert status == 200 and answer["ok"], answer
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    access = {r["url"]["path"]: r for r in proxy.access(count=len(results), timeout=30)}
    assert len(results) > 100
    seen = set(puma.seen(f"/always/{tag}/"))
    for path, status in results:
        record = access[path]
        if record["proxylog"]["mode"] == "enforce":
            assert (record["event"]["action"], status) == ("blocked", 403), record
            assert path not in seen
        else:
            assert (record["event"]["action"], status) == ("would_block", 200), record
            assert path in seen
    audits = [d["proxylog"]["audit"] for d in documents(proxy, "audit.mode")]
    assert len(audits) == 100
    assert all(a["old"] != a["new"] for a in audits)


def test_unban_lifts_the_ban_from_the_next_request(start_proxylog) -> None:
    """An operator ban blocks the next request in enforce mode; unban lets the next one through."""
    proxy = start_proxylog({"rules": ALWAYS}, args=["--enforce"])
    result = ctl(proxy, "ban", "127.0.0.1", "--ttl", "1h", "--reason", "test")
    assert result.returncode == 0, result.stderr
    assert request(proxy.url, "/banned").status == 403
    assert [b["key"] for b in ctl_json(proxy, "bans")["bans"]] == ["127.0.0.1"]
    assert ctl(proxy, "unban", "127.0.0.1").returncode == 0
    assert request(proxy.url, "/free").status == 200
    assert ctl(proxy, "ban", "not-an-ip").returncode == 2  # a usage error, refused before any call
    too_wide = ctl(proxy, "ban", "0.0.0.0/0")
    assert too_wide.returncode == 1 and "wider than /8" in too_wide.stderr
    assert request(proxy.url, "/still-free").status == 200
    commands = [d["proxylog"]["audit"]["command"] for d in documents(proxy, "audit.")]
    assert commands[-2:] == ["ban", "unban"]


def test_bans_persist_across_restart(tmp_path, start_proxylog) -> None:
    """An active ban survives a restart of proxylog."""
    state_dir = tmp_path / "state"
    proxy = start_proxylog({"rules": ALWAYS, "state_dir": str(state_dir)}, args=["--enforce"])
    assert ctl(proxy, "ban", "127.0.0.1", "--ttl", "1h").returncode == 0
    assert proxy.stop() == 0
    again = start_proxylog({"rules": ALWAYS, "state_dir": str(state_dir)}, args=["--enforce"])
    assert request(again.url, "/still-banned").status == 403


def test_a_ban_that_could_not_be_persisted_is_said_and_retried(tmp_path, start_proxylog) -> None:
    """The state file cannot be replaced: `ctl ban` still bans, warns that the ban is not
    persisted, and proxylog writes it once the state file can be written again."""
    state_dir = tmp_path / "state"
    proxy = start_proxylog({"rules": ALWAYS, "state_dir": str(state_dir)})
    blocker = state_dir / "state.json"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "x").write_text("a directory where the state file goes")
    result = ctl(proxy, "ban", "203.0.113.7", "--ttl", "1h")
    assert result.returncode == 0, result.stderr
    assert "warning: cannot persist state" in result.stderr and "not persisted" in result.stderr
    assert [b["key"] for b in ctl_json(proxy, "bans")["bans"]] == ["203.0.113.7"]
    (blocker / "x").unlink()
    blocker.rmdir()
    saved = wait_until(lambda: blocker.is_file() and yaml.safe_load(blocker.read_text()), timeout=30)
    assert [b["key"] for b in saved["bans"]] == ["203.0.113.7"]


def test_runtime_allowlist_wins_and_is_audited(start_proxylog) -> None:
    """`ctl allow add` exempts a network at once (even from a ban); `allow remove` undoes it."""
    proxy = start_proxylog({"rules": ALWAYS}, args=["--enforce"])
    assert request(proxy.url, "/always/x").status == 403
    assert ctl(proxy, "allow", "add", "127.0.0.0/8").returncode == 0
    assert request(proxy.url, "/always/y").status == 200
    assert ctl(proxy, "allow", "remove", "127.0.0.0/8").returncode == 0
    assert request(proxy.url, "/always/z").status == 403
    assert [d["proxylog"]["audit"]["command"] for d in documents(proxy, "audit.")][-2:] == [
        "allow",
        "disallow",
    ]


BAD_RULES = [
    pytest.param(
        [{"id": "x", "when": {"path": "(?<=lookbehind)"}, "threshold": 1}],
        "rules[0].when.path",
        id="re2-rejects-pattern",
    ),
    pytest.param([*ALWAYS, *ALWAYS], "rules[1]: duplicate rule id", id="duplicate-rule-id"),
    pytest.param(
        [{"id": "x", "when": {"path": "^/"}, "threshold": -3}], "rules[0].threshold", id="negative-threshold"
    ),
]


@pytest.mark.parametrize(("rules", "named"), BAD_RULES)
def test_a_bad_rule_reload_keeps_the_old_rules(start_proxylog, rules: list[Any], named: str) -> None:
    """A reload with a rule re2 rejects, a duplicate id or a negative threshold fails naming the
    key path, and the old rules keep enforcing."""
    proxy = start_proxylog({"rules": ALWAYS}, args=["--enforce"])
    rewrite_config(proxy, rules=rules)
    result = ctl(proxy, "reload")
    assert result.returncode == 1 and named in result.stderr, result.stderr
    assert request(proxy.url, "/always/still").status == 403
    assert request(proxy.url, "/other").status == 200


def test_reload_keeps_counters_of_unchanged_rules(start_proxylog) -> None:
    """A rule whose spec did not change keeps counting across a reload."""
    rules = [{"id": "three", "when": {"path": "^/count"}, "threshold": 3, "window": "60s", "action": "block"}]
    proxy = start_proxylog({"rules": rules, "record": {"headers": []}}, args=["--enforce"])
    assert [request(proxy.url, "/count").status for _ in range(2)] == [200, 200]
    rewrite_config(proxy, record={"headers": ["referer"]})
    assert ctl(proxy, "reload").returncode == 0
    assert request(proxy.url, "/count").status == 403


def test_rule_alerts_reach_the_webhook_once_per_key(start_proxylog, receiver) -> None:
    """A rule firing (and the ban it starts) alerts the webhook; firing again for the same key
    within the cooldown does not alert again."""
    rules = [
        {
            "id": "probe",
            "when": {"path": "^/probe"},
            "threshold": 2,
            "window": "60s",
            "action": "block",
            "ban": "1s",
        }
    ]
    alerts = [{"type": "webhook", "url": receiver.url, "group": "200ms", "cooldown": "1h"}]
    proxy = start_proxylog({"rules": rules, "alerts": alerts})
    for _ in range(2):
        request(proxy.url, "/probe")
    assert wait_until(lambda: receiver.alerts())
    time.sleep(1.5)  # let the 1s ban expire, then cross the threshold again
    for _ in range(2):
        request(proxy.url, "/probe")
    time.sleep(1.0)  # a duplicate, if any, would have been posted by now
    kinds = sorted((a["kind"], a["rule"], a["key"]) for a in receiver.alerts())
    assert kinds == [("ban", "probe", "127.0.0.1"), ("rule_fired", "probe", "127.0.0.1")]
    stream = [d["proxylog"]["alert"]["kind"] for d in documents(proxy, "alert")]
    assert sorted(stream) == ["ban", "rule_fired"]


def test_default_config_runs_the_default_pack(tmp_path, start_proxylog) -> None:
    """configs/proxylog.yaml's rule pack loads and tags a scanner user agent in monitor mode."""
    shipped = yaml.safe_load((ROOT / "configs" / "proxylog.yaml").read_text())
    rules = [{"include": str(ROOT / "configs" / "rules" / "default.yaml")}]
    proxy = start_proxylog({"rules": rules, "mode": shipped["mode"]})
    seen = request(
        proxy.url, "/", headers=[("User-Agent", "sqlmap/1.7.2#stable (https://sqlmap.org)")]
    ).json()
    assert seen["headers"].get("HTTP_X_PROXYLOG_TAGS")
    [record] = proxy.access(count=1)
    assert record["event"]["action"] in ("would_block", "allowed") and record.get("tags")
