"""HMAC-chained records and `proxylog verify`. Placeholder."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    """Add the subcommand to the `proxylog` parser (nothing yet)."""
