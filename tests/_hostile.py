"""Many hostile clients at once, each from its own loopback address (both planes cap the
connections of one address): the oversized-head shapes and a raw asyncio client, shared by
the tests and `benchmarks/heads.py`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def head_shapes(size: int) -> dict[str, bytes]:
    """A request head of about `size` bytes in each shape that once cost memory to refuse."""
    return {
        "value": b"GET / HTTP/1.1\r\nHost: app\r\nX-Big: " + b"a" * size + b"\r\n\r\n",
        "many": b"GET / HTTP/1.1\r\nHost: app\r\n" + b"X-h: v\r\n" * (size // 8) + b"\r\n",
        "url": b"GET /" + b"a" * size + b" HTTP/1.1\r\nHost: app\r\n\r\n",
        "name": b"GET / HTTP/1.1\r\nHost: app\r\n" + b"X" * size + b": v\r\n\r\n",
        "empty": b"\r\n" * (size // 2) + b"GET / HTTP/1.1\r\nHost: app\r\n\r\n",
        "noend": b"GET /" + b"a" * size,
        "small": b"GET / HTTP/1.1\r\n\r\n",  # the floor: a tiny head refused (400, no Host)
    }


def source_address(index: int) -> tuple[str, int]:
    """Client `index`'s own loopback address (127.1.0.1, 127.1.0.2, …)."""
    return (f"127.1.{index // 250}.{index % 250 + 1}", 0)


Exchange = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[str]]


async def status_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """The reply's status code, `closed` for a close before any reply."""
    line = await reader.readline()
    return line.split(b" ")[1].decode() if line.startswith(b"HTTP/") else "closed" if not line else "?"


async def until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Everything the proxy sends until it closes the connection (or resets it)."""
    received = b""
    try:
        while chunk := await reader.read(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


async def one_client[T](
    port: int, data: bytes, index: int, exchange: Callable[..., Awaitable[T]], timeout: float = 60
) -> tuple[T | str, float]:
    """Send `data` from client `index`'s address (the transport sends the rest as the proxy
    reads it) and run `exchange` on the reply: its result, or `reset`, `timeout` or
    `connect: <error>`, and the seconds from the first byte sent (not counting the connect:
    a full accept backlog delays it a second)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=source_address(index))
    except OSError as e:
        return f"connect: {type(e).__name__}", 0.0
    started = time.perf_counter()
    writer.write(data)
    outcome: T | str
    try:
        outcome = await asyncio.wait_for(exchange(reader, writer), timeout)
    except (OSError, asyncio.IncompleteReadError):
        outcome = "reset"
    except TimeoutError:
        outcome = "timeout"
    elapsed = time.perf_counter() - started
    writer.transport.abort()
    return outcome, elapsed


def run_clients[T](
    port: int, data: bytes, count: int, exchange: Callable[..., Awaitable[T]], timeout: float = 60
) -> list[tuple[T | str, float]]:
    """`count` concurrent clients, each sending `data` and running `exchange` on the reply."""

    async def gather() -> list[tuple[T | str, float]]:
        return await asyncio.gather(*(one_client(port, data, i, exchange, timeout) for i in range(count)))

    return asyncio.run(gather())
