"""AlertDispatcher units: what an alert may carry, and what happens to alerts still queued
when their webhook closes. Delivery itself is tested end to end in tests/test_control.py."""

from __future__ import annotations

from typing import Any

from proxylog.alerts import AlertDispatcher
from proxylog.config import AlertSpec
from proxylog.config.redact import RedactSpec
from proxylog.redact import Redactor
from tests.conftest import free_port


def dispatcher(emitted: list[dict[str, Any]], **spec: Any) -> AlertDispatcher:
    webhook = AlertSpec(type="webhook", url=f"http://127.0.0.1:{free_port()}/hook", **spec)
    return AlertDispatcher((webhook,), emitted.append, clean=Redactor(RedactSpec()).clean_text)


def test_alert_text_is_redacted_before_it_goes_anywhere() -> None:
    """A sink error quoting a collector's reply can hold request data: the alert event in the
    stream (and so the webhook payload) carries it redacted."""
    emitted: list[dict[str, Any]] = []
    alerts = dispatcher(emitted, group=60.0)
    reply = 'HTTP 400: {"error":"bad doc","doc":"/login?password=hunter2 Authorization: Bearer abc.def"}'
    alerts.notify("sink_failure", "sink", "collector", error=reply)
    alerts.close()
    [event] = emitted
    error = event["proxylog"]["alert"]["error"]
    assert "hunter2" not in error and "abc.def" not in error
    assert error.startswith("HTTP 400:")


def test_alerts_queued_when_a_webhook_closes_are_counted_as_failed() -> None:
    """Closing (shutdown, or a reload that replaces the webhook) never loses an alert silently."""
    emitted: list[dict[str, Any]] = []
    alerts = dispatcher(emitted, group=60.0)  # grouping holds the alert in the queue
    alerts.notify("ban", "probing", "203.0.113.7")
    alerts.close()
    [hook] = alerts._hooks
    hook._thread.join(10)
    assert not hook._thread.is_alive()
    assert (alerts.sent, alerts.failed) == (0, 1)
