"""GuardedHttp1Server driven with mitmproxy's own events: what it buffers of a request head.

The layer is sans-IO, so a client is a series of DataReceived events (64 KiB each, the most
mitmproxy reads at once) and the layer's answer is the commands it yields.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from mitmproxy import connection, options
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import RequestData, RequestHeaders
from mitmproxy.test import taddons

from proxylog.mitm.layers import GuardedHttp1Server

LIMIT = 64 * 1024
READ = 65535  # mitmproxy's read size (proxy/server.py)


@pytest.fixture
def master() -> Iterator[None]:
    with taddons.context():  # a master without a proxy server: no socket to tune
        yield


class Client:
    """One client connection into a GuardedHttp1Server; `refused` collects refuse() calls."""

    def __init__(self, max_head: int = LIMIT) -> None:
        self.conn = connection.Client(
            peername=("127.0.0.1", 40000), sockname=("127.0.0.1", 8080), timestamp_start=0
        )
        self.refused: list[tuple[bytes, int, str]] = []
        self.layer = GuardedHttp1Server(Context(self.conn, options.Options()), max_head, self.refuse)
        self.run(events.Start())

    def refuse(self, client: Any, raw: bytes, status: int, why: str, error: str) -> bytes:
        self.refused.append((raw, status, why))
        return b"HTTP/1.1 %d Refused\r\nconnection: close\r\n\r\n" % status

    def run(self, event: events.Event) -> list[commands.Command]:
        return list(self.layer.handle_event(event))

    def send(self, data: bytes) -> list[commands.Command]:
        return self.run(events.DataReceived(self.conn, data))


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: app\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
        b"\r\n" * 500_000 + b"GET / HTTP/1.1\r\nHost: app\r\n\r\n",
        b"GET /" + b"a" * 1_000_000,
    ],
    ids=["huge-value", "empty-lines", "no-line-end"],
)
def test_a_head_over_the_limit_is_never_buffered_past_it(master: None, head: bytes) -> None:
    """Read by read, at most limit + 1 bytes of a head are held (never the whole read that
    passed the limit), the head is refused 431 with at most those bytes, and after that
    nothing the client sends is kept."""
    client = Client()
    replies = []
    for at in range(0, len(head), READ):
        replies += [c.data for c in client.send(head[at : at + READ]) if isinstance(c, commands.SendData)]
        assert len(client.layer.buf) <= LIMIT + 1
    [(raw, status, why)] = client.refused
    assert status == 431 and why == f"request head over {LIMIT} bytes"
    assert len(raw) <= LIMIT + 1
    assert len(replies) == 1 and replies[0].startswith(b"HTTP/1.1 431 ")
    assert len(client.layer.buf) == 0


def test_what_follows_a_head_that_ended_within_the_limit_is_its_body(master: None) -> None:
    """A head that ends just within the limit, with its body in the same read: the body bytes
    past the limit are not lost."""
    body = b"b" * 1000
    head = b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 1000\r\nX-Pad: "
    head += b"p" * (LIMIT - len(head) - 4) + b"\r\n\r\n"
    assert len(head) == LIMIT
    client = Client()
    commands_ = client.send(head + body)
    assert client.refused == []
    received = [c.event for c in commands_ if isinstance(c, ReceiveHttp)]
    assert isinstance(received[0], RequestHeaders)
    assert b"".join(e.data for e in received if isinstance(e, RequestData)) == body


def test_a_refused_client_is_closed_after_the_linger(master: None) -> None:
    """After the refusal the layer asks for a wakeup, and closes the connection when it comes,
    whether or not the client ever closes its side."""
    client = Client()
    done = client.send(b"GET /" + b"a" * READ) + client.send(b"a" * READ)
    [wakeup] = [c for c in done if isinstance(c, commands.RequestWakeup)]
    assert any(isinstance(c, commands.CloseTcpConnection) and c.half_close for c in done)
    assert client.send(b"a" * READ) == []  # discarded
    closing = client.run(events.Wakeup(wakeup))
    assert [type(c) for c in closing] == [commands.CloseConnection]
