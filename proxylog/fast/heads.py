"""Request heads on the fast plane: finding their end, splitting a head `check_head` accepted,
and writing what Puma receives, with hop-by-hop fields handled (see `upstream_head`)."""

from __future__ import annotations

from dataclasses import dataclass

from proxylog.pipeline.headers import HOP_BY_HOP

# What the client's head is searched for (lower-cased), to skip all hop-by-hop work when absent.
_HOP_MARKS = tuple(b"\n" + name + b":" for name in HOP_BY_HOP)

NO_BODY, LENGTH, CHUNKED = 0, 1, 2
_FRAMING = {b"content-length": LENGTH, b"transfer-encoding": CHUNKED}


@dataclass(slots=True)
class Framing:
    """What a valid request head says about its body and its connection."""

    body: int  # NO_BODY, LENGTH (also for Content-Length: 0) or CHUNKED
    length: int
    http10: bool
    close: bool  # the client wants the connection closed after this exchange
    upgrade: bool  # a protocol upgrade (WebSocket) is requested
    expect_continue: bool
    hop_names: frozenset[bytes] | None  # names to drop upstream; None: the head had none


def split_head(raw: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]]:
    """Method, target, version and header fields (value OWS stripped) of a head that
    `check_head` accepted, so every line ends with CRLF and holds a colon."""
    lines = raw.split(b"\r\n")
    method, target, version = lines[0].split(b" ")
    headers = []
    for line in lines[1:-2]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    return method, target, version, headers


def framing(raw: bytes, version: bytes) -> Framing:
    """Framing and connection facts of a head `check_head` accepted (framing is consistent:
    at most one numeric Content-Length, or Transfer-Encoding exactly chunked)."""
    low = raw.lower()
    body, length = NO_BODY, 0
    at = low.find(b"\ncontent-length:")
    if at >= 0:
        length = int(_value(low, at + 16))
        body = LENGTH
    elif b"\ntransfer-encoding:" in low:
        body = CHUNKED
    http10 = version == b"HTTP/1.0"
    tokens: list[bytes] = []
    at = low.find(b"\nconnection:")
    while at >= 0:
        tokens.extend(t.strip(b" \t") for t in _value(low, at + 12).split(b","))
        at = low.find(b"\nconnection:", at + 1)
    close = b"close" in tokens or (http10 and b"keep-alive" not in tokens)
    upgrade = not http10 and b"upgrade" in tokens and b"\nupgrade:" in low
    at = low.find(b"\nexpect:")
    expect = at >= 0 and _value(low, at + 8) == b"100-continue"
    hop_names = None
    if tokens or any(mark in low for mark in _HOP_MARKS):
        hop_names = HOP_BY_HOP.union(t for t in tokens if t)
    return Framing(body, length, http10, close, upgrade, expect, hop_names)


def _value(low: bytes, start: int) -> bytes:
    return low[start : low.find(b"\r", start)].strip(b" \t")


def upstream_head(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    facts: Framing,
    protected: frozenset[bytes],
) -> bytes:
    """The request head Puma receives: always HTTP/1.1 (so the pooled connection stays
    keep-alive whatever the client speaks), `headers` in their order, minus hop-by-hop fields
    and the names the client's Connection header lists (except `protected` ones). Framing
    fields are the client's: Content-Length as sent, Transfer-Encoding: chunked for a chunked
    body, no other; for an upgrade, Upgrade is kept and Connection becomes `upgrade`."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    special = _FRAMING if facts.hop_names is None else _FRAMING.keys() | facts.hop_names
    framed = connection_sent = False
    for name, value in headers:
        low = name.lower()
        if low in special:
            if low in _FRAMING:
                # the client's framing field, once; anything else would misframe the body
                if framed or _FRAMING[low] != facts.body:
                    continue
                framed = True
            elif low in protected or (facts.upgrade and low == b"upgrade"):
                pass
            elif facts.upgrade and low == b"connection" and not connection_sent:
                value = b"upgrade"
                connection_sent = True
            else:
                continue
        parts += (name, b": ", value, b"\r\n")
    if not framed and facts.body == LENGTH:
        parts.append(b"Content-Length: %d\r\n" % facts.length)
    elif not framed and facts.body == CHUNKED:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def serialize_fields(parts: list[bytes], headers: list[tuple[bytes, bytes]]) -> None:
    """Append `name: value CRLF` for each field to `parts`."""
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
