"""A minimal HTTP/1.1 server for proxylog's own endpoints (control API, metrics).

One request per connection, bounded head and body, a read timeout; handlers are plain
async callables. It is never attached to the proxy listener.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

logger = logging.getLogger("proxylog.http")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: str
    peer_uid: int | None = None
    peer_pid: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


Handler = Callable[[Request], Awaitable[Response]]


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | Response:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        return Response(413, b'{"ok":false,"error":"request head too large"}')
    except asyncio.IncompleteReadError:
        return Response(400, b'{"ok":false,"error":"incomplete request"}')
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError:
        return Response(400, b'{"ok":false,"error":"malformed request line"}')
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        return Response(400, b'{"ok":false,"error":"bad content-length"}')
    if length < 0 or length > MAX_BODY:
        return Response(413, b'{"ok":false,"error":"body too large"}')
    body = await reader.readexactly(length) if length else b""
    return method.upper(), target.split("?", 1)[0], headers, body


def connection_handler(
    handle: Handler, peer_info: Callable[[asyncio.StreamWriter], tuple[str, int | None, int | None]]
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """An asyncio stream callback serving one request with `handle`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            parsed = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT)
            if isinstance(parsed, Response):
                response = parsed
            else:
                method, path, headers, body = parsed
                peer, uid, pid = peer_info(writer)
                try:
                    response = await handle(Request(method, path, headers, body, peer, uid, pid))
                except Exception:
                    logger.exception("handler for %s %s crashed", method, path)
                    response = Response(500, b'{"ok":false,"error":"internal error (see proxylog\'s log)"}')
            head = (
                f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Error')}\r\n"
                f"Content-Type: {response.content_type}\r\nContent-Length: {len(response.body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            head_only = not isinstance(parsed, Response) and parsed[0] == "HEAD"
            writer.write(head if head_only else head + response.body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return serve
