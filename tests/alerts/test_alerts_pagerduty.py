"""`type: pagerduty` against a local Events API v2 receiver that validates every event the
way PagerDuty documents it (required fields, types, lengths): triggers with context,
dedup keys that make repeats update one incident, resolves when a ban ends or a sink
recovers, retries on 5xx and counted drops on 4xx. The runtime tests drive a real Runtime
(rules, redaction, sink workers) so the context comes from where it does in production."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from proxylog.alerts import AlertDispatcher
from proxylog.config import parse_config
from proxylog.config.alerts import parse_alerts
from proxylog.config.reader import Node
from proxylog.errors import SinkError
from proxylog.rules.types import RequestFacts
from proxylog.runtime import Runtime
from proxylog.testing import FakeClock, MemorySink, make_record
from tests.alerts._receivers import PagerDutyReceiver, SmtpReceiver, pagerduty_errors
from tests.alerts.test_alerts import documents, until
from tests.alerts.test_alerts_e2e import RULES, email_channel
from tests.ops.test_control import _Receiver as WebhookReceiver

ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"  # 32 characters, like a real integration key


@pytest.fixture
def pagerduty() -> Iterator[PagerDutyReceiver]:
    receiver = PagerDutyReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def routing_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PROXYLOG_TEST_PD_KEY", ROUTING_KEY)
    return "PROXYLOG_TEST_PD_KEY"


def pd_spec(receiver: PagerDutyReceiver, routing_key: str, **spec: Any) -> dict[str, Any]:
    return {
        "type": "pagerduty",
        "url": receiver.url,
        "routing_key_env": routing_key,
        "group": "20ms",
        "backoff": "10ms",
        **spec,
    }


def pd_dispatcher(
    receiver: PagerDutyReceiver,
    routing_key: str,
    emitted: list[dict[str, Any]],
    clock: Any = None,
    **spec: Any,
) -> AlertDispatcher:
    specs = parse_alerts(Node([pd_spec(receiver, routing_key, **spec)], "alerts"))
    extra = {"clock": clock} if clock is not None else {}
    return AlertDispatcher(specs, emitted.append, host="web-1", **extra)


def test_the_receiver_rejects_what_pagerduty_would() -> None:
    """The receiver's validation is strict enough to catch a wrong shape (so the tests that
    pass through it mean something)."""
    good = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "payload": {"summary": "s", "source": "web-1", "severity": "error"},
    }
    assert pagerduty_errors(good) == []
    assert pagerduty_errors({**good, "routing_key": "short"})
    assert pagerduty_errors({**good, "payload": {**good["payload"], "severity": "high"}})
    assert pagerduty_errors({**good, "payload": {"summary": "s", "severity": "error"}})
    assert pagerduty_errors({"routing_key": ROUTING_KEY, "event_action": "resolve"})
    assert pagerduty_errors({**good, "dedup_key": "x" * 256})


async def test_a_ban_triggers_an_event_with_its_context(pagerduty, routing_key) -> None:
    """A ban becomes a valid v2 trigger: summary, source = host, severity for the kind,
    dedup_key from (kind, rule, key), custom_details with the context."""
    emitted: list[dict[str, Any]] = []
    alerts = pd_dispatcher(pagerduty, routing_key, emitted)
    alerts.start()
    alerts.witness("203.0.113.7", "/.env", 1_700_000_000.0)
    alerts.notify(
        "ban", "probing", "203.0.113.7",
        count=12, threshold=10, window_s=60.0, mode="enforce", enforced=True, until=1_900_000_000.0,
    )  # fmt: skip
    [event] = await until(lambda: pagerduty.events)
    await alerts.aclose(5)
    assert pagerduty.rejected == []
    assert event["routing_key"] == ROUTING_KEY and event["event_action"] == "trigger"
    assert event["dedup_key"] == "proxylog/ban/probing/203.0.113.7"
    payload = event["payload"]
    assert payload["summary"] == "[proxylog] ban 203.0.113.7 by probing on web-1"
    assert (payload["source"], payload["severity"], payload["class"], payload["group"]) == (
        "web-1", "error", "ban", "probing",
    )  # fmt: skip
    details = payload["custom_details"]
    assert details["count"] == "12 of threshold 10 within 1m"
    assert details["mode"] == "enforce, enforced"
    assert details["top paths"] == "/.env (1)"
    assert details["ban ends"] == "2030-03-17T17:46:40Z"
    assert details["key"] == "203.0.113.7"
    assert alerts.snapshot()["channels"]["pagerduty"]["sent"] == 1


async def test_repeats_update_one_incident_and_resolve_closes_it(pagerduty, routing_key) -> None:
    """Every trigger of one (kind, rule, key) carries the same dedup_key; with `resolve: true`
    the ban's end resolves that incident, and a new ban after it triggers again."""
    emitted: list[dict[str, Any]] = []
    alerts = pd_dispatcher(pagerduty, routing_key, emitted, cooldown="1h", resolve=True)
    alerts.start()
    alerts.notify("ban", "probing", "203.0.113.7", until=1_900_000_000.0)
    alerts.notify("ban", "probing", "203.0.113.7", until=1_900_000_000.0)  # within the cooldown
    await until(lambda: len(pagerduty.events) == 1)
    alerts.resolve("ban", "probing", "203.0.113.7")
    alerts.resolve("ban", "probing", "203.0.113.7")  # nothing open any more
    alerts.notify("ban", "probing", "203.0.113.7", until=1_900_000_100.0)
    events = await until(lambda: len(pagerduty.events) >= 3 and pagerduty.events)
    await alerts.aclose(5)
    assert pagerduty.rejected == []
    assert [e["event_action"] for e in events] == ["trigger", "resolve", "trigger"]
    assert {e["dedup_key"] for e in events} == {"proxylog/ban/probing/203.0.113.7"}
    assert events[1] == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": "proxylog/ban/probing/203.0.113.7",
    }
    assert [d["alert"]["action"] for d in documents(emitted, "alert")] == ["trigger", "resolve", "trigger"]


async def test_without_resolve_no_resolve_is_sent(pagerduty, routing_key) -> None:
    """`resolve` is off unless configured: the incident stays for a human to close."""
    emitted: list[dict[str, Any]] = []
    alerts = pd_dispatcher(pagerduty, routing_key, emitted)
    alerts.start()
    alerts.notify("ban", "probing", "203.0.113.7", until=1_900_000_000.0)
    await until(lambda: pagerduty.events)
    alerts.resolve("ban", "probing", "203.0.113.7")
    await alerts.aclose(5)
    assert [e["event_action"] for e in pagerduty.events] == ["trigger"]


async def test_a_ban_that_runs_out_unnoticed_is_resolved_by_upkeep(pagerduty, routing_key) -> None:
    """A ban that expires while no request arrives (so the engine announces nothing) is
    resolved by the dispatcher's tick once its end has passed."""
    clock = FakeClock()
    emitted: list[dict[str, Any]] = []
    alerts = pd_dispatcher(pagerduty, routing_key, emitted, clock=clock, resolve=True)
    alerts.start()
    alerts.notify("ban", "probing", "203.0.113.7", until=clock.now + 60)
    await until(lambda: pagerduty.events)
    alerts.tick()
    clock.advance(61)
    alerts.tick()
    alerts.tick()
    events = await until(lambda: len(pagerduty.events) >= 2 and pagerduty.events)
    await alerts.aclose(5)
    assert [e["event_action"] for e in events] == ["trigger", "resolve"]


async def test_severity_follows_the_kind_and_the_config(pagerduty, routing_key) -> None:
    """Defaults by kind (a failing sink is critical, a rule firing a warning); `severity:`
    overrides per kind. A sink's dedup_key names the host: two hosts, two incidents."""
    emitted: list[dict[str, Any]] = []
    alerts = pd_dispatcher(pagerduty, routing_key, emitted, severity={"ban": "info"})
    alerts.start()
    alerts.notify("ban", "probing", "203.0.113.7")
    alerts.notify("rule_fired", "probing", "203.0.113.7", count=5, threshold=5)
    alerts.notify("sink_failure", "sink", "http:collector", error="HTTP 503")
    events = await until(lambda: len(pagerduty.events) >= 3 and pagerduty.events)
    await alerts.aclose(5)
    severity = {e["payload"]["class"]: e["payload"]["severity"] for e in events}
    assert severity == {"ban": "info", "rule_fired": "warning", "sink_failure": "critical"}
    [sink] = [e for e in events if e["payload"]["class"] == "sink_failure"]
    assert sink["dedup_key"] == "proxylog/sink_failure/sink/http:collector@web-1"
    assert sink["payload"]["custom_details"]["error"] == "HTTP 503"


async def test_a_5xx_is_retried_and_a_4xx_is_a_counted_drop(pagerduty, routing_key, monkeypatch) -> None:
    """503 (PagerDuty overloaded) is retried with backoff; 400 (an event it refuses) is not:
    the alert is dropped at once, counted and recorded with the receiver's answer."""
    emitted: list[dict[str, Any]] = []
    alerts = pd_dispatcher(pagerduty, routing_key, emitted, cooldown=0)
    alerts.start()
    pagerduty.fail_next = 1
    alerts.notify("ban", "probing", "203.0.113.7")
    await until(lambda: pagerduty.events)
    monkeypatch.setattr(alerts.channels[0], "routing_key", "not-32-characters")
    alerts.notify("ban", "probing", "203.0.113.8")
    [dropped] = await until(lambda: documents(emitted, "alerts_dropped"))
    await alerts.aclose(5)
    stats = alerts.snapshot()["channels"]["pagerduty"]
    assert (stats["sent"], stats["retried"], stats["dropped"]) == (1, 1, 1)
    assert dropped["alerts_dropped"]["error"].startswith("HTTP 400:")
    assert "routing_key" in dropped["alerts_dropped"]["error"]
    assert "not-32-characters" not in str(emitted)


def runtime_with_pagerduty(
    receiver: PagerDutyReceiver, routing_key: str, clock: FakeClock, **extra: Any
) -> Runtime:
    config = parse_config({"rules": RULES, "alerts": [pd_spec(receiver, routing_key, resolve=True)], **extra})
    return Runtime(config, sinks=[MemorySink()], clock=clock)


def facts(path: str, ts: float) -> RequestFacts:
    return RequestFacts(ts, "203.0.113.7", "GET", path, None, "curl/8", frozenset(), "app.example.com")


async def test_runtime_alerts_carry_rule_context_and_redacted_paths(pagerduty, routing_key) -> None:
    """Through a real Runtime: the rule's window and the live mode (monitor: not enforced) come
    from the config, the top paths from records after redaction (an AWS key in a path never
    reaches PagerDuty), and lifting the ban resolves the incident."""
    clock = FakeClock()
    runtime = runtime_with_pagerduty(pagerduty, routing_key, clock)
    runtime.start()
    secret = "AKIAIOSFODNN7EXAMPLE"
    for path in ("/.env", f"/.git/{secret}/config", "/wp-login.php"):
        runtime.engine.check(facts(path, clock.now))
        runtime.emit(make_record(path=path, timestamp=clock.now))
        clock.advance(1)
    [trigger] = await until(lambda: [e for e in pagerduty.events if e["payload"]["class"] == "ban"])
    details = trigger["payload"]["custom_details"]
    assert details["count"] == "3 of threshold 3 within 1m"
    assert details["mode"] == "monitor, not enforced"
    assert details["requests"] == "3"
    assert secret not in str(pagerduty.events) and "/.env (1)" in details["top paths"]
    assert runtime.engine.unban("203.0.113.7")
    resolves = await until(lambda: [e for e in pagerduty.events if e["event_action"] == "resolve"])
    assert resolves[0]["dedup_key"] == "proxylog/ban/probing/203.0.113.7"
    await runtime.close(5)
    assert pagerduty.rejected == []


async def test_a_sink_that_recovers_resolves_its_incident(pagerduty, routing_key) -> None:
    """A sink turning unhealthy triggers `sink_failure`; once it writes again, upkeep resolves it."""
    clock = FakeClock()
    runtime = runtime_with_pagerduty(pagerduty, routing_key, clock)
    [worker] = runtime.workers
    sink = worker.sink
    assert isinstance(sink, MemorySink)
    sink.fail_with = SinkError("collector down")
    runtime.start()
    runtime.emit(make_record())
    assert await until(lambda: not worker.stats.healthy)
    await runtime.tick()
    await until(lambda: pagerduty.events)
    sink.fail_with = None
    assert await until(lambda: worker.stats.healthy)
    await runtime.tick()
    events = await until(lambda: len(pagerduty.events) >= 2 and pagerduty.events)
    await runtime.close(5)
    assert [(e["event_action"], e["dedup_key"]) for e in events] == [
        ("trigger", "proxylog/sink_failure/sink/memory@" + runtime.alerts.host),  # type: ignore[union-attr]
        ("resolve", "proxylog/sink_failure/sink/memory@" + runtime.alerts.host),  # type: ignore[union-attr]
    ]


async def test_with_anonymize_ip_no_channel_gets_the_clients_address(
    pagerduty, routing_key, tmp_path
) -> None:
    """`redact.anonymize_ip` hides the client's address from every alert as from every record:
    PagerDuty (summary, dedup key, details), a webhook, Slack and a mail get its /24, with the
    context of the anonymised records, and lifting the ban resolves the same incident."""
    hook = WebhookReceiver()
    smtp = SmtpReceiver(tmp_path, "starttls", credentials=("proxylog", "mail-secret"))
    try:
        clock = FakeClock()
        channels = [
            pd_spec(pagerduty, routing_key, resolve=True),
            {"type": "webhook", "url": hook.url, "group": "20ms"},
            {"type": "slack", "url": hook.url, "group": "20ms"},
            email_channel(tmp_path, smtp.port, ca_file=str(smtp.cert), group="20ms"),
        ]
        config = parse_config({"rules": RULES, "alerts": channels, "redact": {"anonymize_ip": True}})
        runtime = Runtime(config, sinks=[sink := MemorySink()], clock=clock)
        runtime.start()
        for path in ("/.env", "/.git/config", "/wp-login.php"):
            runtime.engine.check(facts(path, clock.now))
            runtime.emit(make_record(path=path, timestamp=clock.now))
            clock.advance(1)
        [trigger] = await until(lambda: [e for e in pagerduty.events if e["payload"]["class"] == "ban"])
        posts = await until(lambda: len(hook.posts) >= 2 and hook.posts)
        assert trigger["dedup_key"] == "proxylog/ban/probing/203.0.113.0"
        assert "ban 203.0.113.0 by probing" in trigger["payload"]["summary"]
        assert trigger["payload"]["custom_details"]["requests"] == "3"
        [alert] = [a for post in posts for a in post["body"].get("alerts", []) if a["kind"] == "ban"]
        assert alert["key"] == "203.0.113.0" and alert["client"]["requests"] == 3
        [text] = [post["body"]["text"] for post in posts if "text" in post["body"]]
        assert "ban 203.0.113.0 by probing" in text
        [mail] = smtp.wait(1)
        assert mail.message["Subject"].startswith("[proxylog] ban 203.0.113.0 by probing on ")
        content = mail.message.get_content()
        assert runtime.engine.unban("203.0.113.7")
        resolves = await until(lambda: [e for e in pagerduty.events if e["event_action"] == "resolve"])
        assert resolves[0]["dedup_key"] == trigger["dedup_key"]
        await runtime.close(5)
        assert "203.0.113.7" not in str(pagerduty.events) + str(hook.posts) + str(sink.lines) + content
        assert pagerduty.rejected == []
    finally:
        hook.close()
        smtp.close()
