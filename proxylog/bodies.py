"""Opt-in request body capture for records. Placeholder: capture is off."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxylog.config.redact import RedactSpec

BodyParser = Callable[[str | None, bytes], Any]


def build_body_parser(spec: RedactSpec) -> BodyParser | None:
    """A parser (content type, raw body) -> captured structure, or None when capture is off."""
    return None
