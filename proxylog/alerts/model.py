"""One alert as every channel sees it, and the words it is told in (subject, details, body).

An alert carries what an on-call engineer needs to act without opening the SIEM: the client
(the rule's key), the rule with its count against the threshold and window, the mode and
whether it was enforced, when the client was first and last seen, its top paths (already
redacted, like records), the ban's end, and the host and proxylog version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["trigger", "resolve"]
TOP_PATHS = 3
DETAILED = 20  # alerts of one message told in full
LISTED = 200  # alerts beyond those named by their headline
LEAD_ORDER = {"ban": 0, "sink_failure": 1, "config_reload_failed": 2, "rule_fired": 3}


@dataclass(frozen=True, slots=True)
class Seen:
    """What proxylog saw of the key's client(s) lately: requests, first and last time, the most
    requested paths (redacted) with their counts, and how many clients that covers."""

    requests: int
    first: float
    last: float
    paths: tuple[tuple[str, int], ...] = ()
    clients: int = 1


@dataclass(frozen=True, slots=True)
class Alert:
    """A trigger (something needs a human) or a resolve (it ended: a ban ran out, a sink
    recovered), identified by (kind, rule, key). Free text is already redacted."""

    kind: str
    rule: str
    key: str
    ts: float
    host: str
    version: str
    action: Action = "trigger"
    count: int | None = None
    threshold: int | None = None
    window_s: float | None = None
    mode: str | None = None
    enforced: bool | None = None
    until: float | None = None
    error: str | None = None
    seen: Seen | None = field(default=None, compare=False)

    @property
    def slot(self) -> tuple[str, str, str]:
        return (self.kind, self.rule, self.key)

    def to_dict(self) -> dict[str, Any]:
        """The alert as JSON-ready values (times as epoch seconds), absent fields left out."""
        doc: dict[str, Any] = {"kind": self.kind, "rule": self.rule, "key": self.key, "ts": self.ts}
        doc["action"] = self.action
        for name in ("count", "threshold", "window_s", "mode", "enforced", "until", "error"):
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        if self.seen is not None:
            doc["client"] = _seen_dict(self.seen)
        doc["host"] = self.host
        doc["version"] = self.version
        return doc


def _seen_dict(seen: Seen) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "requests": seen.requests,
        "first_seen": seen.first,
        "last_seen": seen.last,
        "top_paths": [{"path": path, "count": count} for path, count in seen.paths],
    }
    if seen.clients != 1:
        doc["clients"] = seen.clients
    return doc


def when(ts: float) -> str:
    """A time for people: ``2026-12-03T19:30:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def span(seconds: float) -> str:
    """A duration for people: ``90s``, ``5m``, ``2h``, ``1d``."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _printable(text: str) -> str:
    """One line of text: control characters (a header injection, a terminal escape) become ``?``."""
    return "".join(c if c.isprintable() else "?" for c in text)


def headline(alert: Alert) -> str:
    """What happened, in a few words: ``ban 203.0.113.7 by probing``."""
    key, rule = _printable(alert.key), _printable(alert.rule)
    resolved = alert.action == "resolve"
    match alert.kind:
        case "ban":
            return f"ban {key} by {rule}" + (" ended" if resolved else "")
        case "rule_fired":
            return f"{rule} fired for {key}" + (" (over)" if resolved else "")
        case "sink_failure":
            return f"sink {key} " + ("recovered" if resolved else "failing")
        case "config_reload_failed":
            return f"config reload failed: {key}"
    return f"{_printable(alert.kind)} {rule} {key}" + (" resolved" if resolved else "")


def subject(batch: list[Alert]) -> str:
    """A short subject for one message: ``[proxylog] ban 203.0.113.7 by probing on web-1``,
    led by the weightiest alert (a ban before the rule firing that caused it), with
    ``(+N more)`` when the message groups several."""
    lead = min(batch, key=lambda alert: LEAD_ORDER.get(alert.kind, len(LEAD_ORDER)))
    more = f" (+{len(batch) - 1} more)" if len(batch) > 1 else ""
    return f"[proxylog] {headline(lead)} on {_printable(lead.host)}{more}"


def details(alert: Alert) -> list[tuple[str, str]]:
    """(label, text) pairs of the alert's context, in the order a reader wants them."""
    lines: list[tuple[str, str]] = []
    if alert.threshold:
        window = f" within {span(alert.window_s)}" if alert.window_s else ""
        lines.append(("count", f"{alert.count} of threshold {alert.threshold}{window}"))
    if alert.mode is not None:
        enforced = "" if alert.enforced is None else (", enforced" if alert.enforced else ", not enforced")
        lines.append(("mode", f"{alert.mode}{enforced}"))
    if alert.until is not None:
        lines.append(("ban ends" if alert.action == "trigger" else "ban ended", when(alert.until)))
    if (seen := alert.seen) is not None:
        clients = f" from {seen.clients} clients" if seen.clients != 1 else ""
        lines.append(("requests", f"{seen.requests}{clients}"))
        lines.append(("first seen", when(seen.first)))
        lines.append(("last seen", when(seen.last)))
        if seen.paths:
            lines.append(("top paths", ", ".join(f"{_printable(p)} ({n})" for p, n in seen.paths)))
    if alert.error:
        lines.append(("error", _printable(alert.error)))
    lines.append(("at", when(alert.ts)))
    lines.append(("host", f"{_printable(alert.host)} (proxylog {alert.version})"))
    return lines


def body(batch: list[Alert]) -> str:
    """A plain-text message: per alert its headline, then its details aligned under it; past
    `DETAILED` alerts (a scan of many clients in one group) only headlines, past `LISTED`
    only their number, so a message stays readable and cheap to build."""
    parts = []
    for alert in batch[:DETAILED]:
        rows = details(alert)
        width = max(len(label) for label, _ in rows)
        lines = [headline(alert)] + [f"  {label.ljust(width)}  {text}" for label, text in rows]
        parts.append("\n".join(lines))
    rest = batch[DETAILED:]
    if rest:
        listed = [f"  {headline(alert)}" for alert in rest[:LISTED]]
        unlisted = f"\n  ... and {len(rest) - LISTED} more" if len(rest) > LISTED else ""
        parts.append(
            f"{len(rest)} more alert{'s' if len(rest) > 1 else ''}:\n" + "\n".join(listed) + unlisted
        )
    return "\n\n".join(parts) + "\n\n-- \nproxylog alerts: rule events, bans, sink failures and reloads.\n"
