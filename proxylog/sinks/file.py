"""NDJSON appended to a local file: 0640 in a 0750 directory, rotation by size and time with
retention, reopen for an external logrotate, an fsync interval, and an optional HMAC chain.

A batch lands whole or not at all: when a write fails part-way (ENOSPC), the file is cut
back to where the batch began and the worker retries it later, so a full disk leaves no
torn line and no duplicate.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import time
from collections.abc import Callable

from proxylog.config.sinks import FileSpec, RotateSpec
from proxylog.errors import SinkError
from proxylog.sinks.fsio import DIR_MODE, FILE_MODE, open_append, write_all
from proxylog.sinks.integrity import END, START, Chain, read_key

logger = logging.getLogger("proxylog.sinks")

__all__ = ["DIR_MODE", "FILE_MODE", "FileSink", "rotated_files"]

_STAMP = "%Y%m%dT%H%M%SZ"


def _rotated(path: str) -> list[tuple[str, int, str]]:
    """(stamp, counter, path) of each rotated sibling of `path`, oldest first."""
    directory, base = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(base) + r"\.(\d{8}T\d{6}Z)(?:-(\d+))?$")
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = [
        (m.group(1), int(m.group(2) or 0), os.path.join(directory, name))
        for name in names
        if (m := pattern.match(name))
    ]
    return sorted(found)


def rotated_files(path: str) -> list[str]:
    """The rotated siblings of `path` (``PATH.<UTC stamp>[-N]``), oldest first."""
    return [p for _, _, p in _rotated(path)]


class FileSink:
    """Appends batches (from the sink's thread); opens the file on first write."""

    def __init__(
        self,
        name: str,
        path: str,
        *,
        rotate: RotateSpec | None = None,
        fsync: float | None = None,
        chain: Chain | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.path = path
        self.rotate = rotate
        self.fsync = fsync
        self.chain = chain
        self._clock = clock
        self._fd: int | None = None
        self._size = 0
        self._period: int | None = None
        self._dirty = False
        self._last_sync = clock()
        self.tick_interval = fsync or None  # idle fsync only matters with an interval
        self.rotations = 0

    @classmethod
    def from_spec(cls, spec: FileSpec) -> FileSink:
        chain = None
        if spec.integrity is not None:
            key = read_key(spec.integrity.key_file, f"sinks[{spec.name}].integrity.key_file")
            chain = Chain(key, spec.name, spec.schema)
        return cls(spec.name, spec.path, rotate=spec.rotate, fsync=spec.fsync, chain=chain)

    def _period_of(self, ts: float) -> int | None:
        if self.rotate is None or self.rotate.every is None:
            return None
        return int(ts // self.rotate.every)

    def _open(self, reason: str) -> None:
        fd = open_append(self.path)
        try:
            st = os.fstat(fd)
            self._size = st.st_size
            self._period = self._period_of(st.st_mtime if st.st_size else self._clock())
            if self.chain is not None:
                self._open_chain(fd, reason)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def _open_chain(self, fd: int, reason: str) -> None:
        assert self.chain is not None
        fields: dict[str, object] = {"file": os.path.basename(self.path), "reason": reason}
        if self._size:
            torn = self.chain.resume(self.path)
            if torn:  # our own crash cut the last line short: it never was a record
                os.ftruncate(fd, self._size - torn)
                self._size -= torn
                fields["cut_torn_bytes"] = torn
        data, state = self.chain.link([self.chain.boundary(START, **fields)])
        self._append(fd, data)
        self.chain.commit(state)

    def _append(self, fd: int, data: bytes) -> None:
        """Write all of `data` or, on failure, cut the file back and raise OSError."""
        before = self._size
        try:
            write_all(fd, data)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            raise
        self._size += len(data)
        self._dirty = True

    def write(self, lines: list[bytes]) -> None:
        """Append a batch, rotating first when due; raises a retryable SinkError."""
        try:
            if self._fd is None:
                self._open("open")
            elif self._rotation_due(sum(len(line) for line in lines)):
                self._rotate()
            assert self._fd is not None
            if self.chain is not None:
                data, state = self.chain.link(lines)
                self._append(self._fd, data)
                self.chain.commit(state)
            else:
                self._append(self._fd, b"".join(lines))
            self._maybe_fsync(force=self.fsync == 0)
        except OSError as e:
            raise SinkError(f"cannot write {self.path}: {e.strerror or e}") from e

    def _rotation_due(self, incoming: int) -> bool:
        rotate = self.rotate
        if rotate is None or not self._size:
            return False
        if rotate.size is not None and self._size + incoming > rotate.size:
            return True
        return self._period is not None and self._period_of(self._clock()) != self._period

    def _rotate(self) -> None:
        """Seal and close the file, rename it with a UTC stamp, prune old ones, open anew."""
        self._seal("rotate")
        self._close_fd()
        stamp = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC).strftime(_STAMP)
        # Several rotations in one second get -1, -2…: always above any kept sibling, so
        # names sort oldest first even after retention removed the lower ones.
        same = [n for st, n, _ in _rotated(self.path) if st == stamp]
        n = max(same) + 1 if same else 0
        target = f"{self.path}.{stamp}-{n}" if n else f"{self.path}.{stamp}"
        os.rename(self.path, target)
        self.rotations += 1
        self._prune()
        self._open("rotate")

    def _prune(self) -> None:
        if self.rotate is None or self.rotate.keep is None:
            return
        old = rotated_files(self.path)
        for path in old[: max(len(old) - self.rotate.keep, 0)]:
            try:
                os.unlink(path)
            except OSError as e:
                logger.error("sink %s: cannot remove old %s: %s", self.name, path, e.strerror or e)

    def _seal(self, reason: str) -> None:
        if self.chain is None or self._fd is None:
            return
        data, state = self.chain.link([self.chain.boundary(END, reason=reason)])
        self._append(self._fd, data)
        self.chain.commit(state)

    def _maybe_fsync(self, *, force: bool = False) -> None:
        if self._fd is None or not self._dirty or self.fsync is None:
            return
        now = self._clock()
        if force or now - self._last_sync >= self.fsync:
            os.fsync(self._fd)
            self._dirty = False
            self._last_sync = now

    def tick(self) -> None:
        """Idle housekeeping: fsync when the interval has passed since unsynced writes."""
        try:
            self._maybe_fsync()
        except OSError as e:
            raise SinkError(f"cannot fsync {self.path}: {e.strerror or e}") from e

    def reopen(self) -> None:
        """Seal and close the file so the next write opens `path` afresh (after logrotate
        moved it away)."""
        try:
            self._seal("reopen")
        except OSError as e:
            logger.error(
                "sink %s: cannot seal %s before reopening: %s", self.name, self.path, e.strerror or e
            )
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._dirty and self.fsync is not None:
                os.fsync(fd)
        finally:
            self._dirty = False
            os.close(fd)

    def close(self) -> None:
        """Seal (with integrity), fsync when a policy is set, and close."""
        try:
            self._seal("close")
        except OSError as e:
            logger.error("sink %s: cannot seal %s: %s", self.name, self.path, e.strerror or e)
        self._close_fd()
