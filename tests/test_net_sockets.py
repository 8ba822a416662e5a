"""The socket facts both planes use for slow readers (proxylog/net.py), on real loopback
sockets: what a peer has left unread, and whether it reset the connection."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys

import pytest

from proxylog.net import UNREAD_LIMIT, peer_failed, unread_bytes

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SIOCOUTQNSD is Linux's")


async def _pair() -> tuple[asyncio.Transport, socket.socket, asyncio.Server]:
    """A server transport and the blocking client socket at its other end, whose receive
    buffer is small, so that what it does not read stays on the server's side."""
    accepted: asyncio.Queue[asyncio.Transport] = asyncio.Queue()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.put_nowait(transport)  # type: ignore[arg-type]

    server = await asyncio.get_running_loop().create_server(Accept, "127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(server.sockets[0].getsockname())
    return await accepted.get(), client, server


async def test_unread_bytes_counts_what_the_peer_has_not_taken() -> None:
    transport, client, server = await _pair()
    try:
        assert unread_bytes(transport) == 0
        transport.write(b"x" * (2 * UNREAD_LIMIT))  # loopback: the kernel takes it in the call
        left = unread_bytes(transport)
        assert UNREAD_LIMIT < left <= 2 * UNREAD_LIMIT
        client.setblocking(False)
        taken = 0
        while taken < 2 * UNREAD_LIMIT:
            try:
                taken += len(client.recv(65536))
            except BlockingIOError:
                await asyncio.sleep(0)  # the loop writes what the transport still buffers
        assert unread_bytes(transport) == 0
    finally:
        transport.abort()
        client.close()
        server.close()


async def test_peer_failed_says_whether_the_peer_reset_the_connection() -> None:
    transport, client, server = await _pair()
    try:
        assert not peer_failed(transport)
        transport.pause_reading()  # as after a half-close: only the socket can tell
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset, delivered within the call on loopback
        assert peer_failed(transport)
    finally:
        transport.abort()
        server.close()


def test_without_a_transport_nothing_is_unread_and_nothing_failed() -> None:
    assert unread_bytes(None) == 0
    assert not peer_failed(None)
