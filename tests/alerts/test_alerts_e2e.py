"""Alert channels through a running `proxylog serve` in front of real Puma: a rule's ban
becomes one mail over STARTTLS with AUTH, counted in `ctl stats` and the metrics; a dead
SMTP server costs the requests nothing and its alerts end as counted, recorded drops."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests._http import request
from tests.alerts._receivers import SmtpReceiver
from tests.conftest import free_port
from tests.ops.test_control import ctl, ctl_json, documents, wait_until

PROBES = ("/.env", "/.git/config", "/wp-login.php")
RULES = [
    {
        "id": "probing",
        "when": {"path": "^/(\\.env|\\.git|wp-login)"},
        "threshold": 3,
        "window": "60s",
        "action": "block",
        "ban": "10m",
    }
]


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[SmtpReceiver]:
    directory = tmp_path / "smtp"
    directory.mkdir()
    server = SmtpReceiver(directory, "starttls", credentials=("proxylog", "mail-secret"))
    yield server
    server.close()


def email_channel(tmp_path: Path, port: int, **extra: Any) -> dict[str, Any]:
    password = tmp_path / "smtp.password"
    password.write_text("mail-secret\n")
    return {
        "type": "email",
        "host": "127.0.0.1",
        "port": port,
        "from": "proxylog@example.com",
        "to": ["oncall@example.com"],
        "username": "proxylog",
        "password_file": str(password),
        "group": "200ms",
        "cooldown": "1h",
        **extra,
    }


def test_a_rules_ban_sends_one_mail_with_its_context(start_proxylog, smtp_server, tmp_path) -> None:
    """Probing three paths bans the client (enforced): one mail, led by the ban, carrying the
    count, mode, top paths and host; the requests the ban then blocks add no mail. A failed
    reload afterwards is the next mail, so anything sent in between would show."""
    metrics_port = free_port()
    channel = email_channel(tmp_path, smtp_server.port, ca_file=str(smtp_server.cert))
    proxy = start_proxylog(
        {"rules": RULES, "alerts": [channel], "metrics": {"listen": f"127.0.0.1:{metrics_port}"}},
        args=["--enforce"],
    )
    statuses = [request(proxy.url, path).status for path in PROBES]
    assert statuses == [200, 200, 403]
    [mail] = smtp_server.wait(1)
    assert [request(proxy.url, path).status for path in PROBES] == [403, 403, 403]
    proxy.config_path.write_text("sinks: [\n")
    assert ctl(proxy, "reload").returncode == 1
    mails = smtp_server.wait(2)
    assert len(mails) == 2 and "config reload failed" in mails[1].message["Subject"]
    assert mail.tls and mail.login == "proxylog" and mail.rcpt_tos == ["oncall@example.com"]
    host = socket.gethostname()
    assert mail.message["Subject"] == f"[proxylog] ban 127.0.0.1 by probing on {host} (+1 more)"
    text = mail.message.get_content().replace("\r\n", "\n")
    assert "ban 127.0.0.1 by probing\n" in text and "probing fired for 127.0.0.1\n" in text
    assert "count       3 of threshold 3 within 1m" in text
    assert "mode        enforce, enforced" in text
    assert "top paths   /.env (1), /.git/config (1), /wp-login.php (1)" in text
    assert f"host        {host} (proxylog " in text
    assert "mail-secret" not in text
    stats = ctl_json(proxy, "stats")["alerts"]
    assert stats["channels"]["email:127.0.0.1"] == {
        "type": "email",
        "sent": 3,
        "retried": 0,
        "dropped": 0,
        "suppressed": 0,
        "queued": 0,
    }
    text = request(f"http://127.0.0.1:{metrics_port}", "/metrics").body.decode()
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "proxylog_alerts"]
    sent = {
        s.labels["result"]: s.value
        for s in family.samples
        if s.name == "proxylog_alerts_total" and s.labels["channel"] == "email:127.0.0.1"
    }
    assert sent == {"sent": 3, "retried": 0, "dropped": 0, "suppressed": 0}


def test_a_dead_smtp_server_costs_no_request_and_loses_no_alert(start_proxylog, tmp_path) -> None:
    """An SMTP server that accepts connections and never answers: requests are answered as
    ever while the alert thread waits on it; the alerts are retried, then dropped, counted in
    `ctl stats` and recorded as an alerts_dropped event in the stream."""
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)  # never accepted: connect succeeds, the greeting never comes
        channel = email_channel(
            tmp_path, blackhole.getsockname()[1], timeout="1s", attempts=2, backoff="100ms", group="50ms"
        )
        config = {"rules": RULES, "alerts": [channel], "trusted_proxies": ["127.0.0.1/32"]}
        proxy = start_proxylog(config, args=["--enforce"])
        prober = [("X-Forwarded-For", "203.0.113.7")]
        assert [request(proxy.url, path, headers=prober).status for path in PROBES] == [200, 200, 403]
        others = [("X-Forwarded-For", "198.51.100.9")]
        assert [request(proxy.url, "/", headers=others).status for _ in range(20)] == [200] * 20
        [dropped] = wait_until(lambda: documents(proxy, "alerts_dropped"), timeout=20)
    assert dropped["proxylog"]["alerts_dropped"]["channel"] == "email:127.0.0.1"
    kinds = sorted(a["kind"] for a in dropped["proxylog"]["alerts_dropped"]["alerts"])
    assert kinds == ["ban", "rule_fired"]
    stats = ctl_json(proxy, "stats")["alerts"]["channels"]["email:127.0.0.1"]
    assert (stats["sent"], stats["retried"], stats["dropped"]) == (0, 1, 2)
    assert len(proxy.access()) == 23
