"""NDJSON appended to a local file (0640 in a 0750 directory)."""

from __future__ import annotations

import os

from proxylog.config.sinks import FileSpec
from proxylog.errors import SinkError
from proxylog.sinks._io import write_all

FILE_MODE = 0o640
DIR_MODE = 0o750


class FileSink:
    """Appends batches (from the sink's thread); the file is opened on first write and
    created 0640 in a 0750 directory."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self._fd: int | None = None

    @classmethod
    def from_spec(cls, spec: FileSpec) -> FileSink:
        return cls(spec.name, spec.path)

    def _open(self) -> int:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self.path, flags, FILE_MODE)

    def write(self, lines: list[bytes]) -> None:
        try:
            if self._fd is None:
                self._fd = self._open()
            write_all(self._fd, b"".join(lines))
        except OSError as e:
            raise SinkError(f"cannot write {self.path}: {e.strerror or e}") from e

    def reopen(self) -> None:
        """Close the file so the next write opens `path` afresh (after logrotate moved it)."""
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
