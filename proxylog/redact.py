"""The Redactor, compiled once per config. Placeholder: passes records through unchanged."""

from __future__ import annotations

from proxylog.config.redact import RedactSpec
from proxylog.record import AccessRecord


class Redactor:
    """Applied to every record before anything else sees it."""

    def __init__(self, spec: RedactSpec) -> None:
        self.spec = spec

    def __call__(self, record: AccessRecord) -> AccessRecord:
        return record
