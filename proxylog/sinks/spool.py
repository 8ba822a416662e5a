"""A bounded, ordered on-disk queue of NDJSON lines: the overflow of one sink.

Lines live in numbered segment files inside a directory the spool holds an exclusive
``flock`` on, so two processes (or a worker and its replacement after a reload) never share
one. Reading is two-step: `read` hands out the oldest lines, `commit` forgets them once
the sink has them; a crash in between replays them (at-least-once). All methods block on
disk I/O and are called from the owning worker's threads under its lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re

from proxylog.sinks.fsio import write_all

logger = logging.getLogger("proxylog.sinks")

DIR_MODE = 0o750
FILE_MODE = 0o640
SEGMENT_BYTES = 4 * 1024 * 1024
FIRST_SEGMENT = 10**15  # room to prepend below it
MAX_SIBLINGS = 16
_SEGMENT = re.compile(r"^(\d{20})\.ndjson$")


def spool_dir_name(sink_name: str) -> str:
    """A directory name for a sink: readable, filesystem-safe and unique per name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", sink_name).strip("._")[:60] or "sink"
    return f"{safe}-{hashlib.sha256(sink_name.encode()).hexdigest()[:8]}"


class Spool:
    """The spool directory `base` (or ``base.N`` when another process holds `base`), opened
    lazily by `acquire`; bounded to `max_bytes` of segment data."""

    def __init__(self, base: str, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.base = base
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.path: str | None = None
        self.last_path: str | None = None  # the directory last held (it outlives `close`)
        self.depth = 0  # lines on disk, read-but-uncommitted included
        self.lost = 0  # lines in segments that became unreadable (the worker counts them)
        self.bytes = 0
        self._lock_fd: int | None = None
        self._segments: list[int] = []  # ids, oldest first
        self._sizes: dict[int, int] = {}
        self._lines: dict[int, int] = {}  # unconsumed lines per segment
        self._head_offset = 0  # committed bytes of the oldest segment
        self._tail_fd: int | None = None
        self._tail_id: int | None = None
        self._read_lengths: list[int] = []  # lengths of lines handed out by read()
        self._cursor_fd: int | None = None

    @property
    def held(self) -> bool:
        return self.path is not None

    def acquire(self) -> bool:
        """Hold a spool directory (creating it 0750) and load what an earlier run left in it;
        False when none can be had. Raises OSError only for I/O errors on a held directory."""
        if self.path is not None:
            return True
        for index in range(MAX_SIBLINGS):
            path = self.base if index == 0 else f"{self.base}.{index}"
            if self._try_lock(path):
                self.path = self.last_path = path
                self._load()
                return True
        return False

    def existing(self) -> bool:
        """Whether `base` or a sibling already holds segments (cheap; creates nothing)."""
        for index in range(MAX_SIBLINGS):
            path = self.base if index == 0 else f"{self.base}.{index}"
            try:
                if any(_SEGMENT.match(n) for n in os.listdir(path)):
                    return True
            except OSError:
                continue
        return False

    def adopt_orphan(self) -> bool:
        """While this spool is empty, switch to a sibling directory another process left
        segments in (its lock is free); True if one was adopted."""
        if self.depth:
            return False
        own = self.path
        for index in range(MAX_SIBLINGS):
            path = self.base if index == 0 else f"{self.base}.{index}"
            if path == own:
                continue
            try:
                if not any(_SEGMENT.match(n) for n in os.listdir(path)):
                    continue
            except OSError:
                continue
            lock_fd = self._lock_fd
            self._lock_fd = None
            if self._try_lock(path):
                if lock_fd is not None:
                    os.close(lock_fd)
                self._close_files()
                self.path = self.last_path = path
                self._load()
                logger.warning("spool %s: adopted %d records left by an earlier process", path, self.depth)
                return True
            self._lock_fd = lock_fd
        return False

    def _try_lock(self, path: str) -> bool:
        try:
            os.makedirs(path, mode=DIR_MODE, exist_ok=True)
            fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as e:
            logger.error("spool %s: cannot open: %s", path, e.strerror or e)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _load(self) -> None:
        assert self.path is not None
        ids = sorted(int(m.group(1)) for n in os.listdir(self.path) if (m := _SEGMENT.match(n)))
        self._segments, self._sizes, self._lines, self.depth, self.bytes = [], {}, {}, 0, 0
        self._head_offset = 0
        head_id, head_offset = self._read_cursor()
        for seg in ids:
            path = self._segment_path(seg)
            with open(path, "rb") as f:
                data = f.read()
            if data and not data.endswith(b"\n"):  # torn by a crash mid-append: drop the torn line
                cut = data.rfind(b"\n") + 1
                logger.error("spool %s: dropping a torn line (%d bytes)", path, len(data) - cut)
                os.truncate(path, cut)
                data = data[:cut]
            skip = head_offset if seg == head_id and 0 < head_offset <= len(data) else 0
            data = data[skip:]
            if not data:
                os.unlink(path)
                continue
            if not self._segments:
                self._head_offset = skip
            self._segments.append(seg)
            self._sizes[seg] = len(data) + skip
            self._lines[seg] = data.count(b"\n")
            self.depth += self._lines[seg]
            self.bytes += len(data)
        self._cursor_fd = os.open(
            os.path.join(self.path, "cursor"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
        )
        if self.depth:
            logger.warning("spool %s: %d records from an earlier run will be replayed", self.path, self.depth)

    def _read_cursor(self) -> tuple[int | None, int]:
        assert self.path is not None
        try:
            with open(os.path.join(self.path, "cursor"), "rb") as f:
                seg, offset = f.read(64).split()[:2]
            return int(seg), int(offset)
        except (OSError, ValueError):
            return None, 0

    def _write_cursor(self) -> None:
        if self._cursor_fd is None:
            return
        head = self._segments[0] if self._segments else 0
        text = f"{head:020d} {self._head_offset:020d}\n".encode()
        try:
            os.pwrite(self._cursor_fd, text, 0)
        except OSError as e:  # a stale cursor only means replaying some lines twice
            logger.error("spool %s: cannot update the cursor: %s", self.path, e.strerror or e)

    def _segment_path(self, seg: int) -> str:
        assert self.path is not None
        return os.path.join(self.path, f"{seg:020d}.ndjson")

    def room(self) -> int:
        return max(self.max_bytes - self.bytes, 0)

    def append(self, lines: list[bytes], *, force: bool = False) -> int:
        """Append the lines that fit under `max_bytes` (with `force`, all of them: the few
        marker lines that announce a loss must not be lost to the same full spool); returns
        how many were appended (0 when full or when the disk refuses)."""
        if not self.acquire():
            return 0
        count, size, room = 0, 0, sum(map(len, lines)) if force else self.room()
        for line in lines:
            if size + len(line) > room:
                break
            size += len(line)
            count += 1
        if not count:
            return 0
        tail = self._tail()
        before = self._sizes[tail]
        assert self._tail_fd is not None
        try:
            write_all(self._tail_fd, b"".join(lines[:count]))
        except OSError as e:
            self._undo(tail, before, e)
            return 0
        self._sizes[tail] = before + size
        self._lines[tail] += count
        self.depth += count
        self.bytes += size
        return count

    def prepend(self, lines: list[bytes]) -> bool:
        """Put lines before everything spooled (a batch that was in flight at shutdown)."""
        if not lines or not self.acquire():
            return not lines
        data = b"".join(lines)
        seg = (self._segments[0] if self._segments else FIRST_SEGMENT) - 1
        path = self._segment_path(seg)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            logger.error("spool %s: cannot prepend %d records: %s", self.path, len(lines), e.strerror or e)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return False
        self._segments.insert(0, seg)
        self._sizes[seg] = len(data)
        self._lines[seg] = len(lines)
        self._head_offset = 0
        self._read_lengths = []
        self.depth += len(lines)
        self.bytes += len(data)
        self._write_cursor()
        return True

    def _tail(self) -> int:
        tail = self._tail_id
        if tail is not None and tail == self._segments[-1] and self._sizes[tail] < self.segment_bytes:
            return tail
        if self._tail_fd is not None:
            os.close(self._tail_fd)
            self._tail_fd = None
        seg = self._segments[-1] + 1 if self._segments else FIRST_SEGMENT
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._tail_fd = os.open(self._segment_path(seg), flags, FILE_MODE)
        self._tail_id = seg
        self._segments.append(seg)
        self._sizes[seg] = 0
        self._lines[seg] = 0
        return seg

    def _undo(self, seg: int, size: int, error: OSError) -> None:
        with contextlib.suppress(OSError):
            os.truncate(self._segment_path(seg), size)
        if error.errno != errno.ENOSPC:
            logger.error("spool %s: append failed: %s", self.path, error.strerror or error)

    def read(self, limit: int) -> list[bytes]:
        """Up to `limit` of the oldest lines (from one segment), without forgetting them."""
        while self._segments:
            seg = self._segments[0]
            try:
                f = open(self._segment_path(seg), "rb")  # noqa: SIM115
            except OSError as e:
                self.lost += self._forget_head(e)
                continue
            with f:
                f.seek(self._head_offset)
                lines = []
                for line in f:
                    if not line.endswith(b"\n"):  # never half a line
                        break
                    lines.append(line)
                    if len(lines) >= limit:
                        break
            self._read_lengths = [len(line) for line in lines]
            if lines or seg == self._tail_id:
                return lines
            self._read_lengths = []
            self.commit(0)  # an exhausted segment: drop it and read the next
            if self._segments and self._segments[0] == seg:
                return []
        return []

    def _forget_head(self, error: OSError) -> int:
        """Drop an unreadable head segment from the index; returns the records it held."""
        seg = self._segments.pop(0)
        lost = self._lines.pop(seg, 0)
        self.bytes -= self._sizes.pop(seg, 0) - self._head_offset
        self.depth -= lost
        self._head_offset = 0
        self._read_lengths = []
        if seg == self._tail_id and self._tail_fd is not None:
            os.close(self._tail_fd)
            self._tail_fd, self._tail_id = None, None
        logger.error(
            "spool %s: segment %d unreadable (%s): %d records lost",
            self.path,
            seg,
            error.strerror or error,
            lost,
        )
        return lost

    def commit(self, count: int) -> None:
        """Forget the first `count` lines handed out by the last `read`."""
        if not self._segments or self.path is None:
            return
        consumed = sum(self._read_lengths[:count])
        self._read_lengths = self._read_lengths[count:]
        seg = self._segments[0]
        self._head_offset += consumed
        self.depth -= count
        self._lines[seg] -= count
        self.bytes -= consumed
        if self._head_offset >= self._sizes[seg]:
            if seg == self._tail_id and self._tail_fd is not None:
                os.close(self._tail_fd)
                self._tail_fd, self._tail_id = None, None
            try:
                os.unlink(self._segment_path(seg))
            except OSError as e:
                logger.error("spool %s: cannot remove a replayed segment: %s", self.path, e.strerror or e)
            self._segments.pop(0)
            del self._sizes[seg]
            del self._lines[seg]
            self._head_offset = 0
        self._write_cursor()

    def _close_files(self) -> None:
        for fd in (self._tail_fd, self._cursor_fd):
            if fd is not None:
                os.close(fd)
        self._tail_fd, self._tail_id, self._cursor_fd = None, None, None

    def close(self) -> None:
        """Release the directory (what is spooled stays for the next run)."""
        self._close_files()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.path = None
