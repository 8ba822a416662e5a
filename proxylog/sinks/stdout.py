"""NDJSON on standard output, for container log collectors."""

from __future__ import annotations

import sys

from proxylog.config.sinks import StdoutSpec
from proxylog.errors import SinkError
from proxylog.sinks.fsio import write_all


class StdoutSink:
    """Writes batches to fd 1 (from the sink's thread): a stalled reader stalls only this
    sink, and a closed pipe (EPIPE) fails its batches without touching the proxy."""

    def __init__(self, name: str = "stdout", fd: int | None = None) -> None:
        self.name = name
        self._fd = sys.stdout.fileno() if fd is None else fd

    @classmethod
    def from_spec(cls, spec: StdoutSpec) -> StdoutSink:
        return cls(spec.name)

    def write(self, lines: list[bytes]) -> None:
        try:
            write_all(self._fd, b"".join(lines))
        except BrokenPipeError as e:
            raise SinkError("stdout is closed (broken pipe)", retryable=False) from e
        except OSError as e:
            raise SinkError(f"stdout write failed: {e}") from e

    def close(self) -> None:
        """Nothing to release: fd 1 belongs to the process."""
