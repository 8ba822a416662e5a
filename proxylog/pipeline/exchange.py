"""What a data plane hands the pipeline (`RequestHead`), what it gets back (`Block`), and
what one request's passage through it carries (`Exchange`): plain values, no proxy library."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxylog.identity import ClientIdentity
from proxylog.record import Action, ErrorType, Mode, RuleHit

if TYPE_CHECKING:
    from proxylog.rules import RequestFacts

Fields = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class RequestHead:
    """A request head as a client sent it, parsed but not interpreted.

    `target` is the request-target as received: origin-form (``/a?b=1``) or absolute-form
    (``http://host/a``), unless the plane split it already and passes `authority` apart.
    Header names keep their case and order; `started` is the wall-clock time of the head's
    first byte; `head_bytes` its size on the wire (0: worked out from the fields).
    """

    method: bytes
    target: bytes
    version: bytes
    headers: Fields
    peer: tuple[str, int]
    tls: bool = False
    started: float = 0.0
    head_bytes: int = 0
    authority: bytes = b""


@dataclass(frozen=True, slots=True)
class Block:
    """What proxylog answers instead of forwarding: a status, for 429 a Retry-After, and the
    rule's own body if it has one."""

    status: int
    retry_after: int | None = None
    body: str | None = None


@dataclass(slots=True)
class Exchange:
    """One request through the pipeline, from its head to its record.

    The pipeline fills the first part (`begin`, `decide`, `response_fields`); the data plane
    reports what happened in the second (bytes, times, status, error) before `finish`. The
    record is built from this alone, so every plane writes the same record for the same
    request. Body byte counts are the payload (chunk framing excluded).
    """

    request_id: str
    identity: ClientIdentity
    method: bytes
    path: bytes  # origin-form target, as received (not percent-decoded)
    version: bytes
    scheme: str
    peer_port: int
    started: float
    request_head_bytes: int
    host: bytes
    host_headers: int
    chunked_upload: bool
    content_type: bytes | None
    user_agent: str | None
    captured: tuple[tuple[str, str], ...]
    header_names: tuple[bytes, ...]
    # what Puma receives: rewritten forwarding headers, then the tag header if tagged
    upstream_headers: Fields
    # the request line and host as log-safe text, for the rules and the record alike
    method_text: str = ""
    path_text: str = ""
    query_text: str | None = None
    domain_text: str = ""
    truncated: list[str] = field(default_factory=list)
    mode: Mode = Mode.MONITOR
    facts: RequestFacts | None = None
    action: Action = "allowed"
    tags: tuple[str, ...] = ()
    hits: tuple[RuleHit, ...] = ()
    ban_rule: str | None = None  # the rule of the ban covering the client
    enforced: bool = False
    # reported by the data plane
    request_body_bytes: int = 0
    request_content: bytes | None = None  # a buffered body, for opt-in body capture
    request_ended: float | None = None
    response_started: float | None = None
    response_head_bytes: int = 0
    response_body_bytes: int = 0
    response_captured: tuple[tuple[str, str], ...] = ()
    status: int | None = None  # what the client received; None: no response at all
    replied: bool = False  # `status` is proxylog's own reply, not Puma's
    error_type: ErrorType | None = None
    error_message: str | None = None
    upgraded: bool = False
    done: bool = False

    def answered(self, status: int, reply: bytes, body: int | None = None) -> None:
        """proxylog's own reply answered this exchange: `reply` as sent, head and body counted
        apart (`body`: the body's size when `reply` is the body alone, head unknown)."""
        head, sep, rest = reply.partition(b"\r\n\r\n")
        self.status, self.replied = status, True
        if body is not None:
            self.response_head_bytes, self.response_body_bytes = 0, body
        elif sep:
            self.response_head_bytes, self.response_body_bytes = len(head) + len(sep), len(rest)
        else:
            self.response_head_bytes, self.response_body_bytes = len(reply), 0

    def fail(self, error_type: ErrorType, message: str | None) -> None:
        """Note what went wrong; the first cause wins (a later error is its consequence)."""
        if self.error_type is None:
            self.error_type, self.error_message = error_type, message
