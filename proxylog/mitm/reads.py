"""How much of a client's bytes the mitmproxy plane holds before it has read a request head.

asyncio reads a socket 256 KiB at a time into a stream that stops reading only past 128 KiB,
and mitmproxy hands each 64 KiB read down its layers: a client sending a huge head cost a
connection several hundred KiB before any limit was checked. While a head is read (from the
connection's start, and again between requests) the socket is read `HEAD_READ` bytes at a
time and the stream pauses past `HEAD_READ`, so a connection holds at most its head
(`limits.header_bytes`, GuardedHttp1Server) and two such reads. A request body is read with
asyncio's defaults; after a refused head nothing more is read.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from proxylog.mitm.connections import client_transport

HEAD_READ = 8 * 1024
_STREAM_LIMIT = 2**16  # asyncio's default: a stream stops reading past twice this


class Reads(Enum):
    HEAD = "head"
    BODY = "body"
    STOPPED = "stopped"


def set_reads(client: Any, reads: Reads) -> bool:
    """Read a client connection as `reads` says; False if it is gone (or its transport is
    not asyncio's own, which has no read size to set)."""
    transport = client_transport(client)
    if transport is None or not hasattr(transport, "max_size"):
        return False
    stream = getattr(transport.get_protocol(), "_stream_reader", None)
    if reads is Reads.STOPPED:
        transport.pause_reading()
        if stream is not None:
            stream._paused = False  # a stream that had paused reading must not resume it
        return True
    if reads is Reads.HEAD:
        transport.max_size, limit = HEAD_READ, HEAD_READ // 2
    else:
        transport.__dict__.pop("max_size", None)  # the transport class's default again
        limit = _STREAM_LIMIT
    if stream is not None:
        stream._limit = limit
    return True


class HeadReads:
    """The addon bounding a client connection's reads from its start: mitmproxy's
    client_connected hook runs before it reads the first bytes from the stream."""

    def client_connected(self, client: Any) -> None:
        set_reads(client, Reads.HEAD)
