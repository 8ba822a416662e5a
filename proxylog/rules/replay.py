"""`proxylog replay`: historical records and logs through the rules. Placeholder."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    """Add the subcommand to the `proxylog` parser (nothing yet)."""
