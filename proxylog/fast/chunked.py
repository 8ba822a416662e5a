"""A strict incremental reader of chunked request bodies that leaves the bytes as they are.

The fast plane forwards a chunked body to Puma verbatim, so it must know exactly where each
chunk and the body end, and refuse framing that another parser could read differently (the
request-smuggling surface): bare-LF or bare-CR lines, `0x`/signed/space-padded sizes, sizes
of 2**63 and above, control bytes in chunk extensions, data not followed by CRLF. Trailer
fields are refused: Puma ignores them and nothing else in the plane would check them.
"""

from __future__ import annotations

from proxylog.http1 import MAX_CHUNK_LINE as MAX_LINE
from proxylog.http1 import ChunkError as ChunkError  # raised by ChunkedReader.feed
from proxylog.http1 import chunk_size

_SIZE, _DATA, _DATA_END, _LAST = range(4)


class ChunkedReader:
    """Tracks one chunked body through successive reads: `feed` says how far the bytes it was
    given are complete framing, counting the payload; `done` once the last chunk has ended."""

    __slots__ = ("_remaining", "_state", "done", "payload")

    def __init__(self) -> None:
        self._state = _SIZE
        self._remaining = 0
        self.payload = 0  # body bytes without the framing, as the app will read them
        self.done = False

    def feed(self, data: bytes, pos: int = 0) -> int:
        """Consume framing from `data[pos:]` and return the offset up to which it is complete
        and valid (to forward now). Bytes after it are an unfinished size line or CRLF that
        must be fed again with more data; after `done`, they belong to the next request.
        Raises ChunkError. Never blocks."""
        end = len(data)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, end - pos)
                pos += take
                self.payload += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _DATA_END
            elif state == _DATA_END:
                if data[pos : pos + 2] != b"\r\n"[: end - pos]:
                    raise ChunkError("chunk data not followed by CRLF")
                if end - pos < 2:
                    return pos
                pos += 2
                self._state = _SIZE
            elif state == _SIZE:
                lf = data.find(b"\n", pos, pos + MAX_LINE)
                if lf < 0:
                    if end - pos >= MAX_LINE:
                        raise ChunkError("chunk size line too long")
                    if b"\r" in data[pos : end - 1]:
                        raise ChunkError("bare CR in chunk size line")
                    return pos
                size = chunk_size(data[pos:lf])
                pos = lf + 1
                if size:
                    self._remaining = size
                    self._state = _DATA
                else:
                    self._state = _LAST
            else:  # after the last chunk: only the empty line, no trailer fields
                if data[pos : pos + 2] != b"\r\n"[: end - pos]:
                    raise ChunkError("trailers are not supported")
                if end - pos < 2:
                    return pos
                self.done = True
                return pos + 2
        return pos


def dechunk(framed: bytes) -> bytes:
    """The payload of a complete chunked body that `ChunkedReader` already validated."""
    parts: list[bytes] = []
    pos = 0
    while True:
        lf = framed.index(b"\n", pos)
        size = int(framed[pos:lf].partition(b";")[0].rstrip(b"\r"), 16)
        if not size:
            return b"".join(parts)
        parts.append(framed[lf + 1 : lf + 1 + size])
        pos = lf + 1 + size + 2
