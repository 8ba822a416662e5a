"""proxylog's and mitmproxy's own diagnostics: stderr only, capped lines, never blocking."""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable

from proxylog.config import LogSpec
from proxylog.record import cap_text

QUEUE_SIZE = 1000


class _CappedFormatter(logging.Formatter):
    """One line per event: secrets cleaned (`clean`), control characters escaped, capped."""

    def __init__(self, max_bytes: int, clean: Callable[[str], str] | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
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


def setup_logging(spec: LogSpec, clean: Callable[[str], str] | None = None) -> logging.handlers.QueueListener:
    """Route every log line to stderr through a bounded queue and one writer thread.

    `clean` redacts secrets from each line (mitmproxy's debug logs quote raw request bytes).
    Multi-line messages and control characters are escaped by the formatter, so one event
    is one stderr line. Returns the listener; call `.stop()` at exit to flush it.
    """
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(_CappedFormatter(spec.max_line_bytes, clean))
    records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_SIZE)
    listener = logging.handlers.QueueListener(records, stderr, respect_handler_level=False)
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
