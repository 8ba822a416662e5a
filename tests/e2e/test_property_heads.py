r"""Whatever bytes a client sends, its connection ends within the timeouts, every request on
it has exactly one record, and proxylog stays sound (issue 12: the property the hostile
corpus samples by hand).

Hypothesis builds each client's bytes from a valid request (a GET, a POST with a length, a
chunked POST, an HTTP/1.0 GET) and mutates it: control bytes, NUL, bare CR and LF inserted,
obs-fold, duplicate Content-Length, Content-Length with Transfer-Encoding, values just under
and over the limits, every line-ending mix, chunked bodies with random framing, truncation
at any byte, pipelined garbage, or random bytes outright; the client then half-closes or
not. One proxy per engine, in front of Puma, with short timeouts (`header`, `idle` and
`body_window` 1 s). For each example:

- the connection ends (the client reads EOF or a reset) within the header timeout plus a
  margin generous for a loaded machine (a bound to fail on, not a speed claim);
- the reply is nothing, or complete HTTP/1 responses one after another (a TLS alert for
  bytes that start like a TLS record);
- the records of the client's port: one per response (1xx aside), each with its own request
  id, and at most one more for a request left unanswered when the client half-closed; none
  at all only when no request was ever read, which `proxylog_connections_unreadable_total`
  then counted;
- nothing is left in flight and stderr has no traceback.

Derandomized: every run sends the same examples. `PROPERTY_EXAMPLES=2000` searches deeper
(with `--timeout 0`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests import _http
from tests.conftest import Puma, free_port, wait_for_port

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 1.0
HEADER_BYTES = 8192  # small, so heads just under and over it are cheap to send
MARGIN = 5.0  # after the header timeout: only a connection still open then fails
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", 150))
CONFIG = {
    # idle over body_window: a stalled body is the body timeout's (408), not an idle close
    "timeouts": {"header": "1s", "idle": "2s", "body_window": "1s"},
    "limits": {"header_bytes": HEADER_BYTES},
}
TLS_ALERT = b"\x15\x03\x01\x00\x02\x02\x28"
UNREADABLE = "proxylog_connections_unreadable_total"
INFLIGHT = "proxylog_inflight_requests"

# -- the strategy --------------------------------------------------------------------------

CRLF = b"\r\n"
# a line ending: mostly CRLF, so that a mix (one bad ending among good ones) is common
ENDINGS = st.sampled_from([CRLF] * 8 + [b"\n", b"\r", b"\r\r\n", b"\n\r", b""])
ODD_BYTES = st.sampled_from([b"\0", b"\r", b"\n", b"\x01", b"\x1b", b"\x7f", b"\x80", b"\xff", b" ", b"\t"])
METHODS = st.sampled_from([b"GET", b"POST", b"OPTIONS", b"PUT", b"CONNECT", b"G(T", b"get", b""])
_ODD_TARGETS = [b"/a b", b'/"q"', b"/<x>", b"/caf\xe9", b""]
TARGETS = st.sampled_from(
    [*b"/p /p?q=1&r=%20 * http://app/p https://app:8443/p http://u@app/ //p p".split(), *_ODD_TARGETS]
)
VERSIONS = st.sampled_from([*b"HTTP/1.1 HTTP/1.0 HTTP/1.2 HTTP/2.0 http/1.1".split(), b"HTTP/1.1 ", b""])
# 2**63 - 1, 2**63, a length past 64 bits that wraps to 5, and lengths no parser should take
_BIG_LENGTHS = b"9223372036854775807 9223372036854775808 18446744073709551621 +5 -1 0x5 1e3".split()
LENGTHS = st.sampled_from([*_BIG_LENGTHS, b"0" * 30 + b"5", b"5, 5", b" 5", b""])
CODINGS = st.sampled_from(
    [*b"chunked Chunked xchunked".split(), b"gzip, chunked", b"chunked, gzip", b" chunked", b""]
)
# chunk sizes another parser could read differently: prefixed, signed, padded, past 2**63 or 2**64
_BAD_SIZES = b"0x5 +5 ffffffffffffffff 10000000000000005 7fffffffffffffff 5;ext z".split()
CHUNK_SIZES = st.sampled_from([*_BAD_SIZES, b" 5", b"5 ", b"5;e=\x01", b"5;e\nx", b""])


def _field(name: bytes, value: bytes) -> bytes:
    return name + b": " + value


@st.composite
def extra_fields(draw: Any) -> list[bytes]:
    """Header lines a hostile client adds: framing conflicts, folds, odd bytes, huge values."""
    piece = draw(st.integers(0, 11))
    if piece == 0:
        return [_field(b"Content-Length", draw(st.sampled_from([b"0", b"3", b"5", b"64"])))]
    if piece == 1:
        return [_field(b"Transfer-Encoding", draw(CODINGS))]
    if piece == 2:
        return [_field(b"Content-Length", draw(LENGTHS))]
    if piece == 3:  # obs-fold, of a plain field or of a framing one
        return [
            draw(st.sampled_from([b"X-Folded: a", b"Transfer-Encoding:"])),
            b" " + draw(st.sampled_from([b"b", b"chunked"])),
        ]
    if piece == 4:
        return [
            draw(st.sampled_from([b"Content-Length : 5", b"Host : app", b"X-A\t: 1", b"Content_Length: 5"]))
        ]
    if piece == 5:
        return [b"X-Odd: a" + draw(ODD_BYTES) + b"b"]
    if piece == 6:  # a value that puts the head just under or just over limits.header_bytes
        return [_field(b"X-Big", b"a" * draw(st.integers(HEADER_BYTES - 200, HEADER_BYTES + 20)))]
    if piece == 7:
        return [draw(st.sampled_from([b"Host: other", b"Host: a b", b"Host: a\x7fb", b"Host:"]))]
    if piece == 8:
        return [
            draw(
                st.sampled_from(
                    [
                        b"Expect: 100-continue",
                        b"Connection: close",
                        b"Connection: keep-alive",
                        b"Upgrade: websocket",
                        b"Connection: Upgrade",
                        b"TE: trailers",
                    ]
                )
            )
        ]
    if piece == 9:
        return [draw(st.sampled_from([b"no colon", b": empty name", b"X(A): 1", b"X-Obs: caf\xe9"]))]
    if piece == 10:  # a random line
        return [draw(st.binary(max_size=40))]
    return [b"X-Many-%d: v" % i for i in range(draw(st.integers(50, 120)))]


@st.composite
def chunked_body(draw: Any) -> bytes:
    """A chunked body, its framing mostly right and now and then not."""
    body = b""
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(min_size=1, max_size=20))
        size = b"%x" % len(data)
        if draw(st.integers(0, 4)) == 0:
            size = (
                draw(st.sampled_from([size.upper(), b"%x" % (len(data) + 1), b"0" * 20 + size]))
                if draw(st.booleans())
                else draw(CHUNK_SIZES)
            )
        body += size + draw(ENDINGS) + data + draw(ENDINGS)
    if draw(st.integers(0, 5)):
        body += b"0" + draw(ENDINGS)
        if draw(st.integers(0, 5)) == 0:
            body += b"X-Trailer: 1" + CRLF
        body += draw(ENDINGS)
    return body


@dataclass(frozen=True)
class Example:
    data: bytes
    half_close: bool

    def __repr__(self) -> str:
        return f"Example(data={self.data!r}, half_close={self.half_close})"


@st.composite
def requests(draw: Any) -> Example:
    """A valid request, mutated, or now and then random bytes."""
    half_close = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:
        return Example(draw(st.binary(max_size=300)), half_close)
    kind = draw(st.sampled_from(["get", "length", "chunked", "http10"]))
    method = b"GET" if kind in ("get", "http10") else b"POST"
    target = b"/prop/" + kind.encode()
    version = b"HTTP/1.0" if kind == "http10" else b"HTTP/1.1"
    if draw(st.integers(0, 3)) == 0:  # one part of the request line replaced
        part = draw(st.integers(0, 2))
        method = draw(METHODS) if part == 0 else method
        target = draw(TARGETS) if part == 1 else target
        version = draw(VERSIONS) if part == 2 else version
    fields = [] if kind == "http10" else [b"Host: app"]
    fields.append(b"User-Agent: property")
    body = b""
    if kind == "length":
        body = draw(st.binary(max_size=64))
        declared = draw(st.sampled_from([len(body)] * 4 + [len(body) + 3, max(0, len(body) - 3), 0]))
        fields.append(_field(b"Content-Length", b"%d" % declared))
    elif kind == "chunked":
        body = draw(chunked_body())
        fields.append(_field(b"Transfer-Encoding", b"chunked"))
    for extra in draw(st.lists(extra_fields(), max_size=3)):
        at = draw(st.integers(0, len(fields)))
        fields[at:at] = extra
    lines = [b" ".join((method, target, version)), *fields, b""]
    ending = draw(st.sampled_from(["crlf"] * 5 + ["mixed", "mixed", "lf", "cr"]))
    if ending == "crlf":
        head = b"".join(line + CRLF for line in lines)
    elif ending == "mixed":
        head = b"".join(line + draw(ENDINGS) for line in lines)
    else:
        head = b"".join(line + (b"\n" if ending == "lf" else b"\r") for line in lines)
    data = draw(st.sampled_from([b""] * 6 + [CRLF, CRLF * 3, b"\n"])) + head + body
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        data = draw(_mutated(data))
    return Example(data, half_close)


@st.composite
def _mutated(draw: Any, data: bytes) -> bytes:
    at = draw(st.integers(0, len(data)))
    how = draw(st.integers(0, 5))
    if how == 0:  # truncated
        return data[:at]
    if how == 1:
        return data[:at] + draw(ODD_BYTES) + data[at:]
    if how == 2:
        return data[:at] + data[at + draw(st.integers(1, 8)) :]
    if how == 3:  # a second request, or garbage, after this one
        return data + draw(
            st.sampled_from(
                [
                    b"GET /prop/second HTTP/1.1\r\nHost: app\r\n\r\n",
                    b"\r\n",
                    b"garbage\r\n\r\n",
                    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                ]
            )
        )
    if how == 4:
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    return data.replace(CRLF, draw(st.sampled_from([b"\n", b"\r", b"\n\r"])), draw(st.integers(1, 3)))


# -- what the client and the proxy saw -------------------------------------------------------


def exchange(port: int, example: Example) -> tuple[bytes, int, bool]:
    """Send the example's bytes (then a FIN if it says so) and read until the proxy closes or
    the margin after the header timeout runs out: the reply, the client's port and whether
    the connection ended."""
    deadline = time.monotonic() + HEADER_TIMEOUT + MARGIN
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        client_port = sock.getsockname()[1]
        with contextlib.suppress(OSError):  # the proxy may close first: what it sent still counts
            sock.sendall(example.data)
            if example.half_close:
                sock.shutdown(socket.SHUT_WR)
        received = b""
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                return received, client_port, True
            if not chunk:
                return received, client_port, True
            received += chunk
    return received, client_port, False


def response_statuses(reply: bytes) -> list[int]:
    """The statuses of the complete HTTP/1 responses `reply` consists of; AssertionError if it
    is anything else. (No request the strategy builds is a HEAD.)"""
    statuses = []
    rest = reply
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"an incomplete response head: {head[:200]!r}"
        status_line, *lines = head.split(b"\r\n")
        version, _, tail = status_line.partition(b" ")
        code = tail[:3]
        assert version in (b"HTTP/1.1", b"HTTP/1.0") and code.isdigit() and tail[3:4] in (b" ", b""), (
            f"not a status line: {status_line[:200]!r}"
        )
        fields: dict[bytes, bytes] = {}
        for line in lines:
            name, colon, value = line.partition(b":")
            assert colon and name and name.strip() == name, f"not a header line: {line[:200]!r}"
            fields[name.lower()] = value.strip()
        status = int(code)
        statuses.append(status)
        if status < 200 or status in (204, 304):
            continue
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            rest = _after_chunked(rest)
        elif b"content-length" in fields:
            length = int(fields[b"content-length"])
            assert len(rest) >= length, f"a body cut short: {len(rest)} of {length} bytes"
            rest = rest[length:]
        else:
            rest = b""  # delimited by the close
    return statuses


def _after_chunked(data: bytes) -> bytes:
    while True:
        line, sep, data = data.partition(b"\r\n")
        assert sep, "a chunked response body cut short"
        size = int(line.partition(b";")[0], 16)
        if size == 0:
            _, sep, data = data.partition(b"\r\n")  # (no trailers from Puma)
            assert sep, "a chunked response body cut short"
            return data
        assert data[size : size + 2] == b"\r\n", "a chunk cut short"
        data = data[size + 2 :]


@dataclass
class Checker:
    """One proxy under test: checks each example against it, and the request ids accounted."""

    proxy: Any
    metrics_port: int
    engine: str
    seen: set[str] = field(default_factory=set)  # request ids of records already accounted
    examples: int = 0

    def metrics(self) -> dict[str, float]:
        text = _http.request(f"http://127.0.0.1:{self.metrics_port}", "/metrics").body.decode()
        return {
            name: float(value)
            for name, _, value in (line.partition(" ") for line in text.splitlines())
            if name in (UNREADABLE, INFLIGHT)
        }

    def new_records(self, client_port: int) -> list[dict[str, Any]]:
        return [
            r
            for r in self.proxy.access()
            if r["source"]["port"] == client_port and r["http"]["request"]["id"] not in self.seen
        ]

    def check(self, example: Example) -> None:
        self.examples += 1
        unreadable_before = self.metrics()[UNREADABLE]
        reply, client_port, ended = exchange(self.proxy.port, example)
        assert ended, f"the connection was still open {HEADER_TIMEOUT + MARGIN:g} s after it began"
        if reply.startswith(TLS_ALERT[:1]) and example.data[:1] == b"\x16":
            assert reply == TLS_ALERT, f"reply {reply[:200]!r}"
            answered: list[int] = []
        else:
            answered = [s for s in response_statuses(reply) if s >= 200]
        records, unreadable = self.settle(client_port, len(answered), unreadable_before)
        ids = [r["http"]["request"]["id"] for r in records]
        self.seen.update(ids)
        assert len(set(ids)) == len(ids), f"one request recorded twice: {ids}"
        unanswered = 1 if example.half_close else 0
        assert len(answered) <= len(records) <= len(answered) + unanswered, (
            f"{len(records)} records for {len(answered)} responses {answered}"
        )
        recorded = Counter(r["http"].get("response", {}).get("status_code") for r in records)
        assert not Counter(answered) - recorded, f"responses {answered}, records say {recorded}"
        if records:
            assert unreadable == unreadable_before, "a connection with records counted as unreadable"
        else:
            assert unreadable == unreadable_before + 1, "no record, and not counted as unreadable"
        self.check_stderr()

    def settle(
        self, client_port: int, answered: int, unreadable_before: float
    ) -> tuple[list[dict[str, Any]], float]:
        """Wait until the proxy is done with the connection: nothing in flight, a record for
        every response, and a record or the unreadable count. Returns the records and the
        count; after 10 s, what there is (the assertions then say what is missing)."""
        deadline = time.monotonic() + 10
        while True:
            metrics = self.metrics()
            records = self.new_records(client_port)
            done = metrics[INFLIGHT] == 0 and len(records) >= answered
            if done and (records or metrics[UNREADABLE] > unreadable_before):
                time.sleep(0.05)  # a record of a request it got no answer to may trail its close
                return self.new_records(client_port), self.metrics()[UNREADABLE]
            if time.monotonic() > deadline:
                assert metrics[INFLIGHT] == 0, f"{metrics[INFLIGHT]:g} requests still in flight"
                return records, metrics[UNREADABLE]
            time.sleep(0.02)

    def check_stderr(self) -> None:
        crashes = [line for line in self.proxy.stderr_lines if "Traceback" in line or "crashed" in line]
        assert not crashes, "\n".join(self.proxy.stderr_lines[-40:])


def test_any_bytes_get_an_end_within_the_timeouts_and_one_record_per_request(
    start_proxylog: Any, puma: Puma, engine: str
) -> None:
    metrics_port = free_port()
    proxy = start_proxylog({**CONFIG, "metrics": {"listen": f"127.0.0.1:{metrics_port}"}})
    wait_for_port(metrics_port)
    checker = Checker(proxy, metrics_port, engine)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(requests())
    def every_example(example: Example) -> None:
        checker.check(example)

    every_example()
    assert checker.examples >= EXAMPLES
    assert checker.metrics()[INFLIGHT] == 0
    checker.check_stderr()


STALLED = b"POST /stalled HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"


def test_a_stalled_body_is_answered_408(start_proxylog: Any, engine: str) -> None:
    """A body that stops arriving on a connection the client keeps open gets 408 and a
    `client_timeout` record (the property test found the mitmproxy plane closing it with no
    answer, recorded as a disconnect, before it had a body timeout)."""
    proxy = start_proxylog(CONFIG)
    reply, client_port, ended = exchange(proxy.port, Example(STALLED, half_close=False))
    assert ended
    [record] = [r for r in proxy.access(1) if r["source"]["port"] == client_port]
    assert (response_statuses(reply), record["error"]["type"]) == ([408], "client_timeout")
