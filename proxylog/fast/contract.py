"""The plane-neutral contract between a data plane and proxylog's pipeline.

The plane parses and forwards; the pipeline (a `Handler`) decides: it sees every request head
(`begin`), may block it (`check`, `check_body`), rewrites what Puma receives
(`Exchange.path`/`upstream_headers`) and the client's response headers
(`response_head`), builds proxylog's own replies, and is told exactly once when an exchange
is over (`finish`). Handler methods run on the event loop and must not block.

The plane reads an exchange's `request_id`, `path` (the origin-form target Puma gets) and
`upstream_headers`, and reports into it what happened: body byte counts are the payload
(chunk framing excluded); through a 101 tunnel they count the tunnelled bytes, client→upstream
in `request_body_bytes` and upstream→client in `response_body_bytes`.
"""

from __future__ import annotations

from typing import Protocol

from proxylog.pipeline.exchange import Exchange, RequestHead
from proxylog.record import ErrorType

__all__ = ["ErrorType", "Exchange", "Handler", "RequestHead"]


class Handler(Protocol):
    """The pipeline as a data plane sees it."""

    def begin(self, head: RequestHead) -> Exchange:
        """A new exchange for a complete, valid request head; never raises."""
        ...

    def check(self, ex: Exchange) -> bytes | None:
        """None to forward; else a complete HTTP/1.1 reply (with Connection: close) the plane
        sends instead, closing the connection without reading the body. Sets ex.status."""
        ...

    def wants_body(self, ex: Exchange) -> int:
        """> 0: buffer a body up to this many bytes and call `check_body` before forwarding."""
        ...

    def check_body(self, ex: Exchange, body: bytes) -> bytes | None:
        """As `check`, with the buffered request body."""
        ...

    def response_head(
        self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        """The response header fields to send the client (hop-by-hop fields already removed;
        the plane adds its own framing and Connection fields)."""
        ...

    def reply(self, ex: Exchange, status: int, error_type: ErrorType | None, message: str) -> bytes:
        """proxylog's own reply for this exchange; sets ex.status and the error. The plane
        sends it and closes the connection."""
        ...

    def refuse(self, head: RequestHead, status: int, message: str) -> bytes:
        """Record and answer a head refused before any exchange exists (400, 408, 431); its
        method and target are empty when not even the request line was readable. The plane
        sends what this returns (nothing: just close) and closes."""
        ...

    def finish(self, ex: Exchange) -> None:
        """Exactly once per exchange, when it is over, whatever the outcome."""
        ...

    def unreadable(self, reason: str, timed_out: bool, first: bool) -> None:
        """A connection ended without a complete request head (`timed_out`: the header
        timeout closed it; `first`: before any request was read from it, so it has no record
        at all): counted, not recorded."""
        ...

    def is_trusted(self, ip: str) -> bool:
        """Whether `ip` is a trusted proxy (exempt from the per-client connection cap)."""
        ...

    def ban_enforced(self, ip: str) -> bool:
        """Whether an enforced ban now refuses requests from `ip`."""
        ...
