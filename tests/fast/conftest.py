"""Fixtures for the fast plane: a FastServer (with the fake handler) running on its own event
loop in a thread, so tests can use real blocking clients; asyncio or uvloop."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from proxylog.fast import FastOptions, FastServer
from tests.conftest import Puma
from tests.fast._capture import CaptureRelay
from tests.fast._handler import FakeHandler


class Running:
    """A FastServer on its own loop in a thread; loop errors are collected, not lost."""

    def __init__(self, options: FastOptions, handler: FakeHandler, loop: str) -> None:
        self.handler = handler
        self.errors: list[dict[str, Any]] = []
        if loop == "uvloop":
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        self.server = FastServer(options, handler)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(self.server.start())
        self.port = self.server.listen_addrs()[0][1]

    def call[T](self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run `coro` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run[T](self, fn: Callable[[], T]) -> T:
        """Call `fn` on the server's loop (to read its state safely)."""

        async def call() -> T:
            return fn()

        return self.call(call())

    def stop(self) -> None:
        try:
            self.call(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


@pytest.fixture(params=["asyncio"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start_fast(puma: Puma, loop_kind: str) -> Iterator[Callable[..., Running]]:
    """Factory: start_fast(handler=None, upstream_port=None, **options) → a running plane in
    front of Puma (or `upstream_port`); every one started is stopped, and any error the loop
    reported fails the test."""
    started: list[Running] = []

    def start(
        handler: FakeHandler | None = None, upstream_port: int | None = None, **overrides: Any
    ) -> Running:
        options = FastOptions(upstream_port=upstream_port or puma.port, listen_port=0, **overrides)
        running = Running(options, handler or FakeHandler(), loop_kind)
        started.append(running)
        return running

    yield start
    errors = []
    for running in started:
        running.stop()
        errors += running.errors
    assert not errors, f"event loop errors: {errors}"


@pytest.fixture
def capture(puma: Puma) -> Iterator[CaptureRelay]:
    """A raw-capturing relay in front of Puma."""
    relay = CaptureRelay(puma.port)
    yield relay
    relay.close()


def with_options(options: FastOptions, **changes: Any) -> FastOptions:
    return dataclasses.replace(options, **changes)
