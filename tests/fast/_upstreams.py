"""Tiny scripted upstreams for what Puma's test app cannot do: a WebSocket echo (101), a
read-until-close HTTP/1.0 response, invalid responses, a keep-alive connection dropped
before its second answer. Each runs an asyncio server in its own thread."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from collections.abc import Awaitable, Callable

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Upstream:
    """An asyncio server running `script` per connection on a free loopback port."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []  # request heads seen, in order
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("scripted upstream did not start")
        assert self._server is not None
        self.port: int = self._server.sockets[0].getsockname()[1]

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self._ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        return head

    def close(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            self._server.close_clients()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def websocket_echo(upstream_ref: list[Upstream]) -> Script:
    """Answer an upgrade with 101 and echo every WebSocket frame (unmasked) until close."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await upstream_ref[0].read_head(reader)
        key = header(head, b"sec-websocket-key") or b""
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        while True:
            opcode, payload = await read_frame(reader)
            if opcode == 0x8:  # close: answer it and stop
                writer.write(frame(0x8, payload, mask=False))
                await writer.drain()
                return
            writer.write(frame(opcode, payload, mask=False))
            await writer.drain()

    return script


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2))
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8))
    mask = await reader.readexactly(4) if second & 0x80 else b""
    payload = await reader.readexactly(length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, payload


def frame(opcode: int, payload: bytes, mask: bool) -> bytes:
    """One final WebSocket frame (masked as a client must)."""
    key = b"\x01\x02\x03\x04"
    length = len(payload)
    if length < 126:
        head = bytes([0x80 | opcode, (0x80 if mask else 0) | length])
    else:
        head = bytes([0x80 | opcode, (0x80 if mask else 0) | 126]) + length.to_bytes(2)
    if not mask:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def replying(upstream_ref: list[Upstream], response: bytes, then_close: bool = True) -> Script:
    """Read one request head and answer `response` verbatim (then close)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await upstream_ref[0].read_head(reader)
            writer.write(response)
            await writer.drain()
            if then_close:
                return

    return script


def drops_second(upstream_ref: list[Upstream]) -> Script:
    """Answer a connection's first request (keep-alive); close it on the second, unanswered."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await upstream_ref[0].read_head(reader)
        length = int(header(head, b"content-length") or 0)
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
        await writer.drain()
        await upstream_ref[0].read_head(reader)
        # closes without answering: the proxy sees a reset on a reused connection

    return script


def start(make: Callable[[list[Upstream]], Script]) -> Upstream:
    """An Upstream whose script can reach the Upstream itself (to record requests)."""
    ref: list[Upstream] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await make(ref)(reader, writer)

    upstream = Upstream(script)
    ref.append(upstream)
    return upstream
