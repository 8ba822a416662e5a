"""Redaction: secrets and personal data removed from every record before it exists anywhere
else. `Redactor` is compiled once per config; `keys` (credential headers, cookies, parameter
keys), `text` (URLs, free text), `detectors` (re2 value detectors) and `bodies` (opt-in body
capture) are its parts."""

from __future__ import annotations

from proxylog.redact.bodies import BodyParser, build_body_parser
from proxylog.redact.redactor import FAILED_TAG, Redactor

__all__ = ["FAILED_TAG", "BodyParser", "Redactor", "build_body_parser"]
