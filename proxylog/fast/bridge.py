"""The fast plane's `Handler` over the pipeline: what `FastServer` asks, answered by the same
identity, rules, records and sinks as the mitmproxy plane."""

from __future__ import annotations

import logging

from proxylog.http1 import make_reply
from proxylog.pipeline import Block, Exchange, Fields, Pipeline, RequestHead
from proxylog.record import ErrorType

logger = logging.getLogger("proxylog")


class PipelineHandler:
    """Adapts `Pipeline` to the fast plane's `Handler` protocol."""

    __slots__ = ("pipeline",)

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def begin(self, head: RequestHead) -> Exchange:
        return self.pipeline.begin(head)

    def check(self, ex: Exchange) -> bytes | None:
        if ex.host_headers > 1:
            return self.reply(ex, 400, "request_invalid", "more than one Host header")
        block = self.pipeline.decide(ex)
        return None if block is None else self._answer(ex, block)

    def wants_body(self, ex: Exchange) -> int:
        """Buffer bodies up to the streaming threshold when the record captures them, and up
        to the inspection limit when the rules inspect them."""
        runtime = self.pipeline.runtime
        capture = runtime.config.limits.stream_threshold if runtime.body_parser is not None else 0
        return max(capture, self.pipeline.body_limit(ex))

    def check_body(self, ex: Exchange, body: bytes) -> bytes | None:
        ex.request_content = body
        block = self.pipeline.decide_body(ex, body)
        return None if block is None else self._answer(ex, block)

    def response_head(self, ex: Exchange, status: int, headers: Fields) -> Fields:
        return self.pipeline.response_fields(ex, headers)

    def reply(self, ex: Exchange, status: int, error_type: ErrorType | None, message: str) -> bytes:
        if error_type is not None:
            ex.fail(error_type, message)
        return self._answer(ex, Block(status))

    def refuse(self, head: RequestHead, status: int, message: str) -> bytes:
        """A head refused before any exchange (400, 431): recorded as `request_invalid`."""
        ex: Exchange = self.pipeline.begin(head)  # facts too: smuggling probes count toward status rules
        ex.fail("request_invalid", message)
        answer = self._answer(ex, Block(status))
        self.pipeline.finish(ex)
        return answer

    def finish(self, ex: Exchange) -> None:
        self.pipeline.finish(ex)

    def unreadable(self, reason: str, timed_out: bool, first: bool) -> None:
        if first:
            self.pipeline.runtime.metrics.unreadable_connections += 1
        if timed_out:
            self.pipeline.runtime.metrics.header_timeouts += 1
            logger.info("closed a connection: no complete request headers in time (%s)", reason)

    def is_trusted(self, ip: str) -> bool:
        return self.pipeline.runtime.trusted.is_trusted(ip)

    def ban_enforced(self, ip: str) -> bool:
        return self.pipeline.runtime.ban_enforced(ip)

    @staticmethod
    def _answer(ex: Exchange, block: Block) -> bytes:
        answer = make_reply(
            block.status, ex.request_id, ex.method == b"HEAD", retry_after=block.retry_after, body=block.body
        )
        ex.answered(block.status, answer)
        return answer
