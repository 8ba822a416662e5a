"""Alerts: rule firings, bans, sink failures and failed reloads (and, for channels with
`resolve: true`, their ends), as events in the record stream and as messages on the
configured channels: webhooks (generic JSON or Slack), email over SMTP, PagerDuty.

`AlertDispatcher.notify` runs on the event loop and is O(channels); each channel sends from
its own thread, started by `start`, with cooldown, grouping, retry and counted drops.
"""

from proxylog.alerts.dispatcher import AlertDispatcher
from proxylog.alerts.model import Alert, Seen

__all__ = ["Alert", "AlertDispatcher", "Seen"]
