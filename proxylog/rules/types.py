"""The values that cross the rule engine's boundary: facts in, verdicts and events out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from proxylog.record import Mode, RuleHit
from proxylog.state import Ban

__all__ = ["NO_VERDICT", "Ban", "RequestFacts", "RuleEvent", "RuleHit", "Verdict"]


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the engine sees of a request: built by the addon, or by replay from old logs.

    Strings are log-safe text (never raw bytes); `path` and `query` are as received, not
    percent-decoded; `header_names` are lower-case. `resolved` is False when the client is a
    trusted proxy that named no client behind it (see `ClientIdentity.resolved`).

    For request inspection only (empty unless a rule inspects): `headers` holds the values
    of the headers inspected (Cookie, Referer, X-*; lower-case names), `body` a buffered
    request body (size-capped) and `content_type` its Content-Type.
    """

    ts: float
    client_ip: str
    method: str
    path: str
    query: str | None
    user_agent: str | None
    header_names: frozenset[str]
    host: str
    resolved: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The engine's conclusion for one request.

    `block` is what enforcement would do. It is enforced in enforce mode, unless `mode`
    overrides the live mode for this verdict (a rule's own `mode:`): see `enforced`. `tags` go
    into the record and, at request time, to Puma in ``X-Proxylog-Tags``.
    """

    block: bool = False
    status: int = 403
    retry_after: int | None = None
    mode: Mode | None = None
    tags: tuple[str, ...] = ()
    rules: tuple[RuleHit, ...] = ()
    reason: str | None = None
    body: str | None = None


    def enforced(self, live: Mode) -> bool:
        """Whether this verdict's block is carried out under the `live` mode: the decision
        every data plane and replay share."""
        return self.block and (self.mode or live) == Mode.ENFORCE


NO_VERDICT = Verdict()


@dataclass(frozen=True, slots=True)
class RuleEvent:
    """Something an operator may want alerted: a rule first firing for a key, a ban, an unban."""

    kind: Literal["rule_fired", "ban", "unban"]
    rule: str
    key: str
    ts: float
    count: int = 0
    threshold: int = 0
    until: float | None = None
