"""The plane-neutral request pipeline: what any data plane drives, per request.

A data plane parses and forwards; the pipeline decides and records. Per request it calls

- `begin(head)` → an `Exchange`: the client identified, captures taken, the header fields
  Puma is to receive (`ex.upstream_headers`) built;
- `decide(ex)` → None to forward, or a `Block` the plane answers instead (the rules' verdict,
  enforced or only noted per the live mode);
- `body_limit(ex)` → how much of the request body to buffer for inspection (0: none), and
  `decide_body(ex, body)` once that buffered body is in: None, or a `Block` like `decide`;
- `response_fields(ex, fields)` → the response header fields the client gets;
- `finish(ex)` exactly once, whatever happened: the rules observe the outcome and the record
  is built, redacted and queued on the sinks.

No method blocks or raises into the plane: a failure inside is logged and counted, and the
request proceeds (fail-open: a proxylog bug must not take traffic down).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, TypeVar

from proxylog.pipeline.exchange import Block, Exchange, Fields, RequestHead
from proxylog.pipeline.headers import TAGS_HEADER, add_tags, open_exchange, response_fields
from proxylog.pipeline.records import facts_for, record_for

if TYPE_CHECKING:
    from proxylog.rules import Verdict
    from proxylog.runtime import Runtime

__all__ = ["Block", "Exchange", "Fields", "Pipeline", "RequestHead"]

logger = logging.getLogger("proxylog")
E = TypeVar("E", bound=Exchange)


class Pipeline:
    """Identity, rules, record, redaction and sinks, as one data plane sees them. Reads the
    runtime's current parts on every call, so a reload applies from the next request."""

    __slots__ = ("runtime",)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def begin(self, head: RequestHead, factory: type[E] = Exchange) -> E:  # type: ignore[assignment]
        runtime = self.runtime
        ex = open_exchange(head, runtime.trusted, runtime.config.record, factory)
        ex.mode = runtime.mode
        engine = runtime.engine
        if engine.enabled:
            ex.facts = facts_for(ex, runtime.config.record, inspect=engine.inspects)
        return ex

    def decide(self, ex: Exchange) -> Block | None:
        """The rules' request-time verdict: tags go to Puma (X-Proxylog-Tags) and into the
        record; a block is returned when enforced (the live mode, or the rule's own)."""
        if ex.facts is None:
            return None
        verdict = self.runtime.engine.check(ex.facts)
        if verdict.tags:
            add_tags(ex, verdict.tags)
        ex.hits = verdict.rules
        ex.ban_rule = verdict.ban_rule
        return self._enforce(ex, verdict)

    def body_limit(self, ex: Exchange) -> int:
        """The most request-body bytes the rules inspect for this request (0: none); a plane
        that buffers a body no larger than this hands it to `decide_body` before forwarding."""
        if ex.facts is None or ex.action == "blocked":
            return 0
        return self.runtime.engine.body_limit

    def decide_body(self, ex: Exchange, body: bytes) -> Block | None:
        """The body-inspecting rules' verdict once the buffered body is in: merged into the
        request's tags (X-Proxylog-Tags is rewritten) and hits; a Block when enforced."""
        if ex.facts is None or not body or ex.action == "blocked":
            return None
        content_type = None if ex.content_type is None else ex.content_type.decode("latin-1")
        try:
            verdict = self.runtime.engine.check_body(ex.facts, body, content_type)
        except Exception:
            self.runtime.internal_errors += 1
            logger.exception("internal error inspecting the body of %s", ex.request_id)
            return None
        if verdict.tags:
            ex.upstream_headers = [f for f in ex.upstream_headers if f[0] != TAGS_HEADER]
            add_tags(ex, tuple(dict.fromkeys((*ex.tags, *verdict.tags))))
        if verdict.rules:
            ex.hits = (*ex.hits, *verdict.rules)
        return self._enforce(ex, verdict)

    @staticmethod
    def _enforce(ex: Exchange, verdict: Verdict) -> Block | None:
        if not verdict.block:
            return None
        ex.enforced = verdict.enforced(ex.mode)
        if not ex.enforced:
            ex.action = "would_block"
            return None
        ex.action = "blocked"
        return Block(verdict.status, verdict.retry_after, verdict.body)

    def response_fields(self, ex: Exchange, fields: Fields | tuple[tuple[bytes, bytes], ...]) -> Fields:
        return response_fields(ex, fields, self.runtime.config.record)

    def finish(self, ex: Exchange) -> None:
        """Once per exchange: let the rules observe the status sent, then emit the record.
        Idempotent (a second call does nothing)."""
        if ex.done:
            return
        ex.done = True
        runtime = self.runtime
        try:
            if ex.facts is not None and ex.action != "blocked":
                verdict = runtime.engine.observe(ex.facts, ex.status)
                if verdict.tags:
                    ex.tags = tuple(dict.fromkeys((*ex.tags, *verdict.tags)))
                if verdict.rules:
                    ex.hits = (*ex.hits, *verdict.rules)
            runtime.emit(record_for(ex, runtime.config.record, body_parser=runtime.body_parser))
        except Exception:
            runtime.internal_errors += 1
            logger.exception("internal error recording request %s", ex.request_id)
