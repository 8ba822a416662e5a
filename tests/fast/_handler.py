"""A fake pipeline Handler for the fast plane's tests: it records every call, forwards the
client's headers unchanged plus an X-Request-Id, echoes the id on responses, and can be told
to block requests (by head) or bodies."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from proxylog.fast.contract import ErrorType, RequestHead
from proxylog.http1 import make_reply


@dataclass(slots=True)
class FakeExchange:
    """The Exchange the fake handler creates (the plane fills in the counters)."""

    head: RequestHead
    request_id: str
    path: bytes
    upstream_headers: list[tuple[bytes, bytes]]
    request_body_bytes: int = 0
    request_ended: float | None = None
    response_started: float | None = None
    response_head_bytes: int = 0
    response_body_bytes: int = 0
    status: int | None = None
    error_type: ErrorType | None = None
    error_message: str | None = None
    upgraded: bool = False
    finished: int = 0
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class Refusal:
    head: RequestHead | None
    status: int
    message: str


class FakeHandler:
    """Stands for the pipeline. `block(head)` → a status to answer instead of forwarding;
    `body_cap` > 0 buffers bodies for `block_body(body)`; `trusted` peers skip the cap."""

    def __init__(
        self,
        block: Callable[[RequestHead], int | None] | None = None,
        body_cap: int = 0,
        block_body: Callable[[bytes], int | None] | None = None,
        trusted: frozenset[str] = frozenset(),
    ) -> None:
        self.block = block
        self.body_cap = body_cap
        self.block_body = block_body
        self.trusted = trusted
        self.begun: list[FakeExchange] = []
        self.finished: list[FakeExchange] = []
        self.refused: list[Refusal] = []
        self.unreadable_reasons: list[str] = []
        self.bodies: list[bytes] = []
        self.calls: list[str] = []
        self._ids = itertools.count(1)
        self._changed = threading.Condition()

    def begin(self, head: RequestHead) -> FakeExchange:
        request_id = f"req-{next(self._ids)}"
        ex = FakeExchange(
            head, request_id, head.target, [*head.headers, (b"X-Request-Id", request_id.encode())]
        )
        self._note("begin", lambda: self.begun.append(ex))
        return ex

    def check(self, ex: FakeExchange) -> bytes | None:
        self.calls.append("check")
        status = self.block(ex.head) if self.block is not None else None
        if status is None:
            return None
        ex.status = status
        return make_reply(status, ex.request_id, ex.head.method == b"HEAD")

    def wants_body(self, ex: FakeExchange) -> int:
        self.calls.append("wants_body")
        return self.body_cap

    def check_body(self, ex: FakeExchange, body: bytes) -> bytes | None:
        self._note("check_body", lambda: self.bodies.append(body))
        status = self.block_body(body) if self.block_body is not None else None
        if status is None:
            return None
        ex.status = status
        return make_reply(status, ex.request_id, False)

    def response_head(
        self, ex: FakeExchange, status: int, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        self.calls.append("response_head")
        ex.response_headers = headers
        return [*headers, (b"X-Request-Id", ex.request_id.encode())]

    def reply(self, ex: FakeExchange, status: int, error_type: ErrorType | None, message: str) -> bytes:
        self.calls.append(f"reply {status}")
        ex.status, ex.error_type, ex.error_message = status, error_type, message
        return make_reply(status, ex.request_id, ex.head.method == b"HEAD")

    def refuse(self, head: RequestHead, status: int, message: str) -> bytes:
        self._note(f"refuse {status}", lambda: self.refused.append(Refusal(head, status, message)))
        return make_reply(status, "", head.method == b"HEAD")

    def finish(self, ex: FakeExchange) -> None:
        ex.finished += 1
        self._note("finish", lambda: self.finished.append(ex))

    def unreadable(self, reason: str, timed_out: bool = False) -> None:
        self._note("unreadable", lambda: self.unreadable_reasons.append(reason))

    def is_trusted(self, ip: str) -> bool:
        return ip in self.trusted

    def _note(self, call: str, change: Callable[[], None]) -> None:
        with self._changed:
            self.calls.append(call)
            change()
            self._changed.notify_all()

    def wait(self, ready: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until `ready()` (checked whenever the handler is called); raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the handler never reached the expected state")
                self._changed.wait(left)

    def wait_finished(self, count: int = 1, timeout: float = 10.0) -> list[FakeExchange]:
        """The finished exchanges once at least `count` have finished."""
        self.wait(lambda: len(self.finished) >= count, timeout)
        return list(self.finished)
