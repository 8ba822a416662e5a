"""proxylog's and mitmproxy's own diagnostics: stderr only, capped lines, never blocking."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import queue
import sys
from collections.abc import Callable, Sequence

from proxylog.config import Config, LogSpec
from proxylog.record import cap_text

QUEUE_SIZE = 1000
# At exit, how long the writer may take to flush queued lines to stderr before they are dropped.
STOP_TIMEOUT_S = 2.0


class _CappedFormatter(logging.Formatter):
    """One line per event: secrets cleaned (`clean`), control characters escaped, capped."""

    def __init__(self, max_bytes: int, clean: Callable[[str], str] | None = None, who: str = "") -> None:
        super().__init__(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s")
        self.max_bytes = max_bytes
        self.clean = clean

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.clean is not None:
            text = self.clean(text)
        line, cut = cap_text(text, self.max_bytes)
        return line + " …[truncated]" if cut else line


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread; when stderr cannot keep up, drops and counts."""

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            _DroppingQueueHandler.dropped += 1


def dropped_log_lines() -> int:
    """proxylog's own log lines dropped because stderr could not keep up."""
    return _DroppingQueueHandler.dropped


class _StderrWriter:
    """The writer thread's sink: whole lines to fd 2 with os.write.

    Not a logging.Handler and not sys.stderr: a writer blocked on a stalled pipe then holds
    no lock that logging.shutdown or the interpreter's final stderr flush would wait for.
    """

    def __init__(self, formatter: logging.Formatter) -> None:
        self.formatter = formatter

    def handle(self, record: logging.LogRecord) -> None:
        data = (self.formatter.format(record) + "\n").encode("utf-8", "backslashreplace")
        with contextlib.suppress(OSError):  # stderr closed: nothing to tell anyone
            while data:
                data = data[os.write(2, data) :]


class _DroppingQueueListener(logging.handlers.QueueListener):
    """A QueueListener whose stop() never blocks: a full queue loses its oldest lines to make
    room for the stop sentinel, and a writer stuck on a stalled stderr is left behind after
    `STOP_TIMEOUT_S` (its thread is a daemon), its unwritten lines counted as dropped."""

    def enqueue_sentinel(self) -> None:
        while True:
            try:
                self.queue.put_nowait(self._sentinel)  # type: ignore[attr-defined]
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.queue.get_nowait()  # type: ignore[attr-defined]
                    _DroppingQueueHandler.dropped += 1

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self.enqueue_sentinel()
        thread.join(STOP_TIMEOUT_S)
        if thread.is_alive():
            _DroppingQueueHandler.dropped += self.queue.qsize()  # type: ignore[attr-defined]
        self._thread = None


def setup_logging(
    spec: LogSpec, clean: Callable[[str], str] | None = None, worker: int | None = None
) -> logging.handlers.QueueListener:
    """Route every log line to stderr through a bounded queue and one writer thread.

    `clean` redacts secrets from each line (mitmproxy's debug logs quote raw request bytes).
    Multi-line messages and control characters are escaped by the formatter, so one event
    is one stderr line; a supervisor's `worker` names itself on each. Returns the listener;
    call `.stop()` at exit to flush it (it never blocks for long nor raises, even when nobody
    reads stderr).
    """
    who = "" if worker is None else f"[worker {worker}] "
    stderr = _StderrWriter(_CappedFormatter(spec.max_line_bytes, clean, who))
    records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_SIZE)
    listener = _DroppingQueueListener(records, stderr, respect_handler_level=False)  # type: ignore[arg-type]
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_DroppingQueueHandler(records))
    level = getattr(logging, spec.level.upper())
    root.setLevel(level)
    # mitmproxy logs every client and server connection at INFO: keep that for debug only.
    logging.getLogger("mitmproxy").setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    for noisy in ("asyncio", "hpack", "passlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    listener.start()
    return listener


def announce_listening(
    addrs: Sequence[tuple[str, int]], config: Config, engine: str, *, worker: int | None = None
) -> None:
    """The startup line on stderr, once the data plane listens: where, to what, on which
    engine. A supervisor's worker says which one it is; the supervisor says it once for all."""
    where = ", ".join(f"{host}:{port}" for host, port in addrs)
    target = config.upstream if not config.modes else ", ".join(config.modes)
    who = "proxylog" if worker is None else f"proxylog worker {worker}"
    print(f"{who}: listening on {where} -> {target} (engine: {engine})", file=sys.stderr, flush=True)
