"""Blocking write helpers shared by the sinks (they run on the sink's own threads)."""

from __future__ import annotations

import os

FILE_MODE = 0o640
DIR_MODE = 0o750


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (pipes and files may take partial writes)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def make_parent(path: str) -> None:
    """Create the missing directories above `path` with mode 0750."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=DIR_MODE, exist_ok=True)


def open_append(path: str) -> int:
    """An O_APPEND descriptor for `path`, created 0640 in 0750 directories; raises OSError."""
    make_parent(path)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)


def append_private(path: str, data: bytes) -> None:
    """Append `data` to `path` (0640 in 0750 directories); raises OSError."""
    fd = open_append(path)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
