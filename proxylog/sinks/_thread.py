"""One daemon thread per sink for blocking I/O, so a stalled pipe or disk never blocks the loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class BlockingRunner:
    """Runs blocking calls in order on one daemon thread and lets the event loop await them.

    A daemon thread (not a ThreadPoolExecutor, whose exit hook joins its threads) so that a
    write stuck on a dead reader can never keep the process from exiting.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    async def run[T](self, call: Callable[[], T]) -> T:
        """Run `call` on the thread; raises whatever it raised."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
            self._thread.start()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((call, future))
        return await future

    def _main(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, future = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = call()
            except BaseException as e:  # handed to the awaiting coroutine
                error = e
            loop = future.get_loop()
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_settle, future, result, error)

    def close(self) -> None:
        """Let the thread finish its queued calls and exit; returns at once."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (pipes and files may take partial writes)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
