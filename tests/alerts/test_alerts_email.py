"""`type: email` against a real SMTP server on loopback (aiosmtpd, started here): headers,
STARTTLS and implicit TLS with a throwaway certificate, AUTH, the body, grouping, and what
happens when the server refuses, lacks STARTTLS or is not there at all."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxylog.alerts import AlertDispatcher
from proxylog.config.alerts import parse_alerts
from proxylog.config.reader import Node
from proxylog.config.redact import RedactSpec
from proxylog.redact import Redactor
from tests.alerts._receivers import SmtpReceiver
from tests.alerts.test_alerts import documents, until
from tests.conftest import free_port

PASSWORD = "s3cret-smtp-password"


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[Any]:
    """Factory: smtp(tls=..., credentials=...) → a running SmtpReceiver, stopped afterwards."""
    started: list[SmtpReceiver] = []

    def start(tls: str = "starttls", credentials: tuple[str, str] | None = None) -> SmtpReceiver:
        directory = tmp_path / f"smtp{len(started)}"
        directory.mkdir()
        server = SmtpReceiver(directory, tls, credentials)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def email_dispatcher(
    tmp_path: Path,
    emitted: list[dict[str, Any]],
    server: SmtpReceiver | None,
    *,
    trust: bool = True,
    **spec: Any,
) -> AlertDispatcher:
    """A dispatcher with one email channel to `server` (None: a port nothing listens on),
    logging in as proxylog with the password from a file, trusting the server's certificate
    unless `trust` is False."""
    password = tmp_path / "smtp-password"
    password.write_text(PASSWORD + "\n")
    item: dict[str, Any] = {
        "type": "email",
        "host": "127.0.0.1",
        "port": server.port if server is not None else free_port(),
        "from": "proxylog <proxylog@web-1.example.com>",
        "to": ["oncall@example.com", "security@example.com"],
        "group": "50ms",
        "backoff": "10ms",
        "username": "proxylog",
        "password_file": str(password),
        **spec,
    }
    if server is not None and trust:
        item["ca_file"] = str(server.cert)
    specs = parse_alerts(Node([item], "alerts"))
    return AlertDispatcher(specs, emitted.append, clean=Redactor(RedactSpec()).clean_text, host="web-1")


def ban(alerts: AlertDispatcher, key: str = "203.0.113.7") -> None:
    alerts.notify(
        "ban", "probing", key,
        count=12, threshold=10, window_s=60.0, mode="enforce", enforced=True, until=1_900_000_000.0,
    )  # fmt: skip


async def test_starttls_and_auth_deliver_a_plain_text_mail_with_context(tmp_path, smtp) -> None:
    """Over STARTTLS with AUTH (password read from a file), one mail reaches every recipient:
    short subject, From/To/Date/Message-ID/Auto-Submitted headers, and a body with the count
    against threshold and window, mode, ban end, first/last seen and top paths."""
    server = smtp("starttls", credentials=("proxylog", PASSWORD))
    emitted: list[dict[str, Any]] = []
    alerts = email_dispatcher(tmp_path, emitted, server)
    alerts.start()
    for path in ("/.env", "/.git/config", "/.env", "/wp-login.php", "/.env", "/.git/config"):
        alerts.witness("203.0.113.7", path, 1_700_000_000.0)
    ban(alerts)
    [mail] = await until(lambda: server.mails)
    await alerts.aclose(5)
    assert server.logins == [("proxylog", PASSWORD)] and mail.login == "proxylog"
    assert mail.tls
    assert mail.mail_from == "proxylog@web-1.example.com"
    assert mail.rcpt_tos == ["oncall@example.com", "security@example.com"]
    message = mail.message
    assert message["Subject"] == "[proxylog] ban 203.0.113.7 by probing on web-1"
    assert message["From"] == "proxylog <proxylog@web-1.example.com>"
    assert message["To"] == "oncall@example.com, security@example.com"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"] and message["Message-ID"].endswith("@web-1.example.com>")
    assert message.get_content_type() == "text/plain"
    text = message.get_content().replace("\r\n", "\n")
    assert "count       12 of threshold 10 within 1m" in text
    assert "mode        enforce, enforced" in text
    assert "ban ends    2030-03-17T17:46:40Z" in text
    assert "first seen  2023-11-14T22:13:20Z" in text
    assert "top paths   /.env (3), /.git/config (2), /wp-login.php (1)" in text
    assert "host        web-1 (proxylog " in text
    assert PASSWORD not in text
    stats = alerts.snapshot()["channels"]["email:127.0.0.1"]
    assert (stats["sent"], stats["retried"], stats["dropped"]) == (1, 0, 0)


async def test_implicit_tls_sends_over_tls_from_the_first_byte(tmp_path, smtp) -> None:
    """`tls: tls` (SMTPS) speaks TLS from the start; the certificate is checked with `ca_file`."""
    server = smtp("tls", credentials=("proxylog", PASSWORD))
    emitted: list[dict[str, Any]] = []
    alerts = email_dispatcher(tmp_path, emitted, server, tls="tls")
    alerts.start()
    ban(alerts)
    [mail] = await until(lambda: server.mails)
    await alerts.aclose(5)
    assert mail.tls and mail.login == "proxylog"


async def test_an_untrusted_certificate_is_refused_not_ignored(tmp_path, smtp) -> None:
    """Without `ca_file` the throwaway certificate fails verification: nothing is sent, the
    alert is dropped at once (no retry would help), counted and recorded."""
    server = smtp("starttls", credentials=("proxylog", PASSWORD))
    emitted: list[dict[str, Any]] = []
    alerts = email_dispatcher(tmp_path, emitted, server, trust=False)
    alerts.start()
    ban(alerts)
    [dropped] = await until(lambda: documents(emitted, "alerts_dropped"))
    await alerts.aclose(5)
    assert dropped["alerts_dropped"]["error"] == "TLS: self-signed certificate"
    assert server.mails == [] and server.logins == []
    assert alerts.snapshot()["retried"] == 0


async def test_a_server_without_starttls_gets_nothing_in_clear(tmp_path, smtp) -> None:
    """With `tls: starttls` and a server that does not offer it, no mail (and no password) is
    sent in clear: the alert is dropped, counted and recorded."""
    server = smtp("none")
    emitted: list[dict[str, Any]] = []
    alerts = email_dispatcher(tmp_path, emitted, server, trust=False)
    alerts.start()
    ban(alerts)
    [dropped] = await until(lambda: documents(emitted, "alerts_dropped"))
    await alerts.aclose(5)
    assert "offers no STARTTLS" in dropped["alerts_dropped"]["error"]
    assert server.mails == []


async def test_a_wrong_password_is_dropped_without_retrying(tmp_path, smtp) -> None:
    """A 535 to AUTH is the receiver's final word: dropped at once, counted, recorded."""
    server = smtp("starttls", credentials=("proxylog", "another-password"))
    emitted: list[dict[str, Any]] = []
    alerts = email_dispatcher(tmp_path, emitted, server)
    alerts.start()
    ban(alerts)
    [dropped] = await until(lambda: documents(emitted, "alerts_dropped"))
    await alerts.aclose(5)
    assert dropped["alerts_dropped"]["error"].startswith("SMTP 535")
    assert PASSWORD not in dropped["alerts_dropped"]["error"]
    assert (alerts.snapshot()["retried"], alerts.snapshot()["dropped"]) == (0, 1)


async def test_a_dead_server_is_retried_then_the_alert_dropped_with_a_record(tmp_path, caplog) -> None:
    """Nothing listening: `notify` only queues; the channel's thread tries `attempts` times
    with backoff, then counts the alert as dropped, logs it and records an alerts_dropped event."""
    emitted: list[dict[str, Any]] = []
    alerts = email_dispatcher(tmp_path, emitted, None, attempts=3)
    alerts.start()
    with caplog.at_level(logging.WARNING, "proxylog.alerts"):
        ban(alerts)
        assert alerts.channels[0].queued == 1  # queued, not sent: the loop did no I/O
        [dropped] = await until(lambda: documents(emitted, "alerts_dropped"))
    await alerts.aclose(5)
    stats = alerts.snapshot()["channels"]["email:127.0.0.1"]
    assert (stats["sent"], stats["retried"], stats["dropped"]) == (0, 2, 1)
    assert dropped["alerts_dropped"]["channel"] == "email:127.0.0.1"
    assert dropped["alerts_dropped"]["alerts"][0]["key"] == "203.0.113.7"
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "ERROR"]
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


async def test_a_scan_produces_one_mail_not_hundreds(tmp_path, smtp) -> None:
    """Alerts within `group` go out as one mail (`(+N more)` in the subject, every alert in the
    body); repeats of one (kind, rule, key) within the cooldown are suppressed."""
    server = smtp("starttls", credentials=("proxylog", PASSWORD))
    emitted: list[dict[str, Any]] = []
    alerts = email_dispatcher(tmp_path, emitted, server, group="300ms")
    alerts.start()
    for _ in range(50):
        ban(alerts, "203.0.113.7")
    ban(alerts, "203.0.113.8")
    alerts.notify("rule_fired", "probing", "203.0.113.9", count=5, threshold=5, window_s=60.0)
    [mail] = await until(lambda: server.mails)
    await alerts.aclose(5)
    assert mail.message["Subject"] == "[proxylog] ban 203.0.113.7 by probing on web-1 (+2 more)"
    text = mail.message.get_content().replace("\r\n", "\n")
    assert text.count("ban 203.0.113.7 by probing\n") == 1
    assert "ban 203.0.113.8 by probing\n" in text and "probing fired for 203.0.113.9\n" in text
    assert alerts.snapshot()["channels"]["email:127.0.0.1"]["suppressed"] == 49
    assert len(server.mails) == 1  # closing sent whatever was still queued
