"""Redaction spec (``redact:``). Placeholder until the redaction issue fills it in."""

from __future__ import annotations

from dataclasses import dataclass

from proxylog.config._reader import Node


@dataclass(frozen=True, slots=True)
class RedactSpec:
    """What to redact in every record before it reaches any sink."""


def parse_redact(node: Node) -> RedactSpec:
    node.fields(frozenset())
    return RedactSpec()
