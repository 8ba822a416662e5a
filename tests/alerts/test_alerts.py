"""AlertDispatcher units: parsing `alerts:`, what an alert may carry and how it reads, the
evidence behind it, threads (none before `start`), reloads, and what happens to alerts still
queued when their channel closes. Channels against real receivers are in
tests/alerts/test_alerts_email.py and test_alerts_pagerduty.py; webhooks end to end in
tests/ops/test_control.py and test_control_rules.py."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from proxylog.alerts import Alert, AlertDispatcher, Seen
from proxylog.alerts.evidence import Evidence
from proxylog.alerts.model import body, subject
from proxylog.config import ConfigError
from proxylog.config.alerts import EmailAlertSpec, PagerDutyAlertSpec, parse_alerts
from proxylog.config.reader import Node
from proxylog.config.redact import RedactSpec
from proxylog.redact import Redactor
from proxylog.testing import FakeClock
from tests.conftest import free_port


def alerts_config(*items: dict[str, Any]) -> tuple[Any, ...]:
    return parse_alerts(Node(list(items), "alerts"))


def dispatcher(emitted: list[dict[str, Any]], **spec: Any) -> AlertDispatcher:
    webhook = {"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/hook", **spec}
    return AlertDispatcher(alerts_config(webhook), emitted.append, clean=Redactor(RedactSpec()).clean_text)


def documents(emitted: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [doc["proxylog"] for doc in emitted if doc["event"]["action"] == action]


async def until(predicate: Any, timeout: float = 10.0) -> Any:
    """Let the loop run (the channels report through it) until `predicate()` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := predicate()) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    return result


def test_alert_text_is_redacted_before_it_goes_anywhere() -> None:
    """A sink error quoting a collector's reply can hold request data: the alert event in the
    stream (and so every channel's message) carries it redacted."""
    emitted: list[dict[str, Any]] = []
    alerts = dispatcher(emitted, group="60s")
    reply = 'HTTP 400: {"error":"bad doc","doc":"/login?password=hunter2 Authorization: Bearer abc.def"}'
    alerts.notify("sink_failure", "sink", "collector", error=reply)
    [event] = documents(emitted, "alert")
    error = event["alert"]["error"]
    assert "hunter2" not in error and "abc.def" not in error
    assert error.startswith("HTTP 400:")
    [channel] = alerts.channels
    assert "hunter2" not in body([channel._queue[0]])
    alerts.close()


def test_no_thread_starts_before_start() -> None:
    """Building a dispatcher (at start-up, on every reload, in `proxylog check`) reads the
    channels' secrets and starts no thread; closing an unstarted one counts what it held."""
    emitted: list[dict[str, Any]] = []
    before = set(threading.enumerate())
    alerts = dispatcher(emitted, group="60s")
    alerts.notify("ban", "probing", "203.0.113.7")
    assert set(threading.enumerate()) == before
    alerts.close()
    [dropped] = documents(emitted, "alerts_dropped")
    assert dropped["alerts_dropped"]["count"] == 1
    assert alerts.snapshot()["dropped"] == 1


async def test_alerts_queued_when_a_channel_closes_get_one_try_then_a_counted_drop() -> None:
    """Closing (shutdown, or a reload that replaces the channel) sends what is queued at once,
    one try each; what fails is counted as dropped and recorded, never lost silently."""
    emitted: list[dict[str, Any]] = []
    alerts = dispatcher(emitted, group="60s", attempts=5, backoff="60s")  # nothing is listening
    alerts.start()
    alerts.notify("ban", "probing", "203.0.113.7")
    await alerts.aclose(10)
    [channel] = alerts.channels
    assert not channel._thread.is_alive()  # type: ignore[union-attr]
    stats = alerts.snapshot()["channels"][channel.name]
    assert (stats["sent"], stats["retried"], stats["dropped"]) == (0, 0, 1)
    [dropped] = documents(emitted, "alerts_dropped")
    assert dropped["alerts_dropped"]["alerts"] == [
        {"kind": "ban", "rule": "probing", "key": "203.0.113.7", "action": "trigger"}
    ]
    assert "Connection refused" in dropped["alerts_dropped"]["error"]


def test_subject_and_body_carry_the_context_to_act() -> None:
    """The subject is short (`[proxylog] ban 203.0.113.7 by probing on web-1`); the body says
    count vs threshold and window, mode and enforcement, first/last seen, top paths, the ban's
    end, host and version."""
    seen = Seen(requests=14, first=1_700_000_000.0, last=1_700_000_042.0, paths=(("/.env", 6), ("/.git", 4)))
    alert = Alert(
        "ban", "probing", "203.0.113.7", 1_700_000_042.5, "web-1", "0.1.0",
        count=12, threshold=10, window_s=60.0, mode="enforce", enforced=True,
        until=1_700_000_642.0, seen=seen,
    )  # fmt: skip
    assert subject([alert]) == "[proxylog] ban 203.0.113.7 by probing on web-1"
    assert subject([alert, alert, alert]) == "[proxylog] ban 203.0.113.7 by probing on web-1 (+2 more)"
    text = body([alert])
    for line in (
        "ban 203.0.113.7 by probing\n",
        "  count       12 of threshold 10 within 1m\n",
        "  mode        enforce, enforced\n",
        "  ban ends    2023-11-14T22:24:02Z\n",
        "  requests    14\n",
        "  first seen  2023-11-14T22:13:20Z\n",
        "  last seen   2023-11-14T22:14:02Z\n",
        "  top paths   /.env (6), /.git (4)\n",
        "  host        web-1 (proxylog 0.1.0)\n",
    ):
        assert line in text


def test_header_injection_in_a_key_cannot_add_a_header() -> None:
    """Control characters in what an alert names (a sink or config path) become `?` in the
    subject, so they cannot start a new mail header."""
    alert = Alert("sink_failure", "sink", "evil\r\nBcc: x@example.com", 0.0, "web-1", "0.1.0")
    assert "\r" not in subject([alert]) and "\n" not in subject([alert])


def test_evidence_keeps_top_paths_first_and_last_seen_per_client() -> None:
    """Evidence counts requests per client: first/last seen, the three most requested paths;
    a CIDR key sums its clients; a client quiet for `quiet` seconds starts afresh."""
    evidence = Evidence(max_clients=3, quiet=600.0)
    for ts, ip, path in [
        (10.0, "203.0.113.7", "/.env"),
        (11.0, "203.0.113.7", "/.git/config"),
        (12.0, "203.0.113.7", "/.env"),
        (13.0, "203.0.113.7", "/wp-login.php"),
        (14.0, "203.0.113.7", "/.env"),
        (15.0, "203.0.113.7", "/.git/config"),
        (16.0, "203.0.113.7", "/admin"),
        (20.0, "203.0.113.9", "/admin"),
    ]:
        evidence.witness(ip, path, ts)
    seen = evidence.summary("203.0.113.7")
    assert seen == Seen(7, 10.0, 16.0, (("/.env", 3), ("/.git/config", 2), ("/admin", 1)), 1)
    network = evidence.summary("203.0.113.0/24")
    assert network is not None and (network.requests, network.clients) == (8, 2)
    assert network.paths == (("/.env", 3), ("/.git/config", 2), ("/admin", 2))
    assert evidence.summary("203.0.113.0/24", networks=False) is None
    assert evidence.summary("global") is None
    evidence.witness("203.0.113.7", "/", 1000.0)
    assert evidence.summary("203.0.113.7") == Seen(1, 1000.0, 1000.0, (("/", 1),), 1)
    for ip in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        evidence.witness(ip, "/", 1001.0)
    assert len(evidence) == 3 and evidence.summary("203.0.113.9") is None


def test_cooldown_suppresses_repeats_per_channel() -> None:
    """One alert per (kind, rule, key) per cooldown; other keys still alert."""
    clock = FakeClock()
    emitted: list[dict[str, Any]] = []
    webhook = {"type": "webhook", "url": "http://127.0.0.1:9/hook", "cooldown": "5m"}
    alerts = AlertDispatcher(alerts_config(webhook), emitted.append, clock=clock)
    alerts.notify("ban", "probing", "203.0.113.7")
    alerts.notify("ban", "probing", "203.0.113.7")
    alerts.notify("ban", "probing", "203.0.113.8")
    clock.advance(301)
    alerts.notify("ban", "probing", "203.0.113.7")
    assert len(documents(emitted, "alert")) == 3
    assert alerts.snapshot()["suppressed"] == 1
    alerts.close()


def test_a_reload_keeps_unchanged_channels_and_their_state() -> None:
    """A dispatcher built with `previous` reuses the channel whose spec is unchanged (its
    cooldown still holds) and builds the changed one anew; `close(keep=)` closes only that."""
    emitted: list[dict[str, Any]] = []
    first = alerts_config(
        {"type": "webhook", "url": "http://127.0.0.1:9/a"},
        {"type": "slack", "url": "http://127.0.0.1:9/b"},
    )
    old = AlertDispatcher(first, emitted.append)
    old.notify("ban", "probing", "203.0.113.7")
    second = alerts_config(
        {"type": "webhook", "url": "http://127.0.0.1:9/a"},
        {"type": "slack", "url": "http://127.0.0.1:9/c", "name": "team"},
    )
    new = AlertDispatcher(second, emitted.append, previous=old)
    assert new.channels[0] is old.channels[0] and new.channels[1] is not old.channels[1]
    old.close(keep=new)
    assert not old.channels[0]._stopping.is_set() and old.channels[1]._stopping.is_set()
    new.notify("ban", "probing", "203.0.113.7")
    assert new.channels[0].stats.suppressed == 1 and new.channels[1].stats.suppressed == 0
    new.close()


def test_an_unreadable_secret_is_a_config_error_naming_the_channel(tmp_path) -> None:
    """A password or routing key that cannot be read fails the build, naming alerts[i]."""
    specs = alerts_config(
        {"type": "webhook", "url": "http://127.0.0.1:9/a"},
        {"type": "pagerduty", "routing_key_file": str(tmp_path / "missing")},
    )
    with pytest.raises(ConfigError, match=r"alerts\[1\].*cannot read secret file"):
        AlertDispatcher(specs, lambda doc: None)


def test_email_and_pagerduty_specs_parse_with_defaults() -> None:
    """`type: email` defaults to STARTTLS on 587; `type: pagerduty` to the public endpoint."""
    email, pagerduty = alerts_config(
        {
            "type": "email",
            "host": "smtp.example.com",
            "from": "proxylog <proxylog@example.com>",
            "to": ["oncall@example.com", "sec@example.com"],
            "username": "proxylog",
            "password_env": "SMTP_PASSWORD",
        },
        {"type": "pagerduty", "routing_key_env": "PD_KEY", "resolve": True, "severity": {"ban": "critical"}},
    )
    assert isinstance(email, EmailAlertSpec)
    assert (email.name, email.tls, email.port, email.to) == (
        "email:smtp.example.com",
        "starttls",
        587,
        ("oncall@example.com", "sec@example.com"),
    )
    assert isinstance(pagerduty, PagerDutyAlertSpec)
    assert pagerduty.url == "https://events.pagerduty.com/v2/enqueue" and pagerduty.resolve
    assert dict(pagerduty.severity)["ban"] == "critical"
    assert dict(pagerduty.severity)["sink_failure"] == "critical"


@pytest.mark.parametrize(
    ("item", "error"),
    [
        (
            {"type": "email", "host": "smtp.example.com", "from": "a@example.com"},
            r"alerts\[0\]\.to: is required",
        ),
        (
            {"type": "email", "host": "smtp.example.com", "from": "a@example.com", "to": "not-an-address"},
            r"alerts\[0\]\.to: expected an email address",
        ),
        (
            {"type": "email", "host": "h", "from": "a@example.com", "to": "b@example.com", "password": "x"},
            r"alerts\[0\]\.password: unknown key",
        ),
        (
            {"type": "email", "host": "h", "from": "a@example.com", "to": "b@example.com", "username": "u"},
            r"alerts\[0\]: `username` needs `password_file` or `password_env`",
        ),
        (
            {
                "type": "email",
                "host": "h",
                "from": "a@example.com",
                "to": "b@example.com",
                "tls": "none",
                "username": "u",
                "password_env": "P",
            },
            r"alerts\[0\]\.tls: AUTH needs TLS",
        ),
        (
            {"type": "email", "host": "h:25", "from": "a@example.com", "to": "b@example.com"},
            r"alerts\[0\]\.host: expected a host name",
        ),
        ({"type": "pagerduty"}, r"alerts\[0\]: needs `routing_key_file` or `routing_key_env`"),
        ({"type": "pagerduty", "routing_key": "abc"}, r"alerts\[0\]\.routing_key: unknown key"),
        (
            {"type": "pagerduty", "routing_key_env": "K", "severity": {"ban": "page-me"}},
            r"alerts\[0\]\.severity\.ban: expected one of critical, error, warning, info",
        ),
        ({"type": "sms", "url": "http://x"}, r"alerts\[0\]\.type: expected one of webhook"),
    ],
)
def test_bad_alert_config_names_the_key(item: dict[str, Any], error: str) -> None:
    """Every mistake in a channel is a ConfigError naming its key path."""
    with pytest.raises(ConfigError, match=error):
        alerts_config(item)


def test_two_channels_of_one_name_are_refused() -> None:
    """Channel names label the metrics: two webhooks to one host need a `name:`."""
    with pytest.raises(ConfigError, match=r"alerts\[1\]: duplicate alert channel name 'webhook:127.0.0.1'"):
        alerts_config(
            {"type": "webhook", "url": "http://127.0.0.1:9/a"},
            {"type": "webhook", "url": "http://127.0.0.1:9/b"},
        )


@pytest.mark.parametrize(
    ("channel", "missing"),
    [
        (
            {
                "type": "email", "host": "127.0.0.1", "from": "a@example.com", "to": "b@example.com",
                "username": "u", "password_env": "PROXYLOG_TEST_UNSET_PASSWORD",
            },
            "PROXYLOG_TEST_UNSET_PASSWORD",
        ),
        ({"type": "pagerduty", "routing_key_file": "/nonexistent/routing-key"}, "/nonexistent/routing-key"),
    ],
    ids=["smtp-password", "pagerduty-routing-key"],
)  # fmt: skip
def test_check_reads_every_channels_secret(
    tmp_path, channel: dict[str, Any], missing: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """`proxylog check` builds the channels (no thread starts), so an SMTP password or a
    routing key that serve could not read fails the check, naming the channel."""
    import re

    import orjson
    import yaml

    from proxylog.cli import main

    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump({"alerts": [channel], "state_dir": str(tmp_path / "state")}))
    assert main(["check", "--json", str(path)]) == 2
    errors = [f"{e['path']}: {e['message']}" for e in orjson.loads(capfd.readouterr().out)["errors"]]
    assert any(re.search(rf"alerts\[0\].*{missing}", error) for error in errors), errors


def test_the_documented_examples_parse() -> None:
    """Every `alerts:` example in the README and the docs is a valid config (secrets are read
    when channels are built, not when parsed)."""
    import re

    import yaml

    from tests.conftest import ROOT

    texts = [path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]]
    blocks = [b for text in texts for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "alerts:" in b]
    assert len(blocks) >= 5
    for block in blocks:
        assert parse_alerts(Node(yaml.safe_load(block)["alerts"], "alerts"))


def test_a_message_of_many_alerts_stays_readable() -> None:
    """A group of 250 bans (a distributed scan) is one message: 20 told in full, 200 more by
    their headline, and the count of the rest."""
    batch = [
        Alert("ban", "probing", f"10.0.0.{i}", 0.0, "web-1", "0.1.0", count=1, threshold=1)
        for i in range(250)
    ]
    text = body(batch)
    assert text.count("  count ") == 20
    assert "230 more alerts:\n  ban 10.0.0.20 by probing\n" in text
    assert "  ban 10.0.0.219 by probing\n  ... and 30 more\n" in text and "10.0.0.220" not in text
    assert subject(batch) == "[proxylog] ban 10.0.0.0 by probing on web-1 (+249 more)"
