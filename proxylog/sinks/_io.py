"""Blocking write helpers shared by the sinks (they run on the sink's own thread)."""

from __future__ import annotations

import os


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (pipes and files may take partial writes)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
