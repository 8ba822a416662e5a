"""The two data planes side by side: the same bytes sent to each give the same record and the
same request at Puma.

One proxy per engine runs in front of the same Puma with the same config (a rule pack in
enforce mode, body capture on). Each case is a raw request sent over a socket to both; the
echo app answers with what Puma received. What may differ by nature is left out: times,
the client's source port, and the response head's size (each plane counts the head it
sends: mitmproxy forwards Puma's framing, the fast plane reframes).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Puma

pytestmark = pytest.mark.e2e

CONFIG: dict[str, Any] = {
    "mode": "enforce",
    "record": {"headers": ["referer", "content-type", "cookie", "authorization"]},
    "redact": {"body": {"capture": True}},
    "rules": [
        {"id": "scanner", "when": {"user_agent": ["sqlmap"]}, "action": "block"},
        {"id": "admin", "when": {"path": ["/wp-admin"]}, "action": "tag", "tags": ["probe"]},
    ],
}

# (name, raw request): each path is unique per case, so records and Puma's log line up.
CASES: list[tuple[str, bytes]] = [
    ("get-secrets-in-query", b"GET /d/q?password=hunter2&token=abc&page=2 HTTP/1.1\r\nHost: app\r\n\r\n"),
    (
        "spoofing-headers",
        b"GET /d/spoof HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"
        b"X_Forwarded_For: 7.7.7.7\r\nForwarded: for=8.8.8.8\r\nX-Forwarded-Proto: https\r\n"
        b"X-Proxylog-Tags: forged\r\nClient-IP: 9.9.9.9\r\n\r\n",
    ),
    (
        "credentials",
        b"GET /d/creds HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig\r\n"
        b"Cookie: _session=abc123; theme=dark\r\nReferer: https://app/login?password=x\r\n\r\n",
    ),
    (
        "form-post",
        b"POST /d/form HTTP/1.1\r\nHost: app\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 35\r\n\r\nuser=alice&password=s3cret&remember",
    ),
    (
        "json-post",
        b"POST /d/json HTTP/1.1\r\nHost: app\r\nContent-Type: application/json\r\nContent-Length: 43\r\n\r\n"
        b'{"email":"a@example.com","api_key":"k-123"}',
    ),
    (
        "chunked-post",
        b"POST /d/chunked HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: text/plain\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    ),
    ("head", b"HEAD /d/head HTTP/1.1\r\nHost: app\r\n\r\n"),
    ("status-404", b"GET /status/404?d=404 HTTP/1.1\r\nHost: app\r\n\r\n"),
    ("absolute-form", b"GET http://other.example:8080/d/absolute?x=1 HTTP/1.1\r\nHost: app\r\n\r\n"),
    ("http10-no-host", b"GET /d/http10 HTTP/1.0\r\n\r\n"),
    ("client-request-id", b"GET /d/rid HTTP/1.1\r\nHost: app\r\nX-Request-Id: my-request_42@edge\r\n\r\n"),
    ("tagged", b"GET /wp-admin?d=tag HTTP/1.1\r\nHost: app\r\n\r\n"),
    ("blocked-scanner", b"GET /d/blocked HTTP/1.1\r\nHost: app\r\nUser-Agent: sqlmap/1.7\r\n\r\n"),
    ("two-host-headers", b"GET /d/hosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("header-whitespace", b"GET /d/ows HTTP/1.1\r\nHost:app\r\nX-A: \t b \t\r\nX-B:\r\n\r\n"),
    ("encoded-path", b"GET /d/caf%C3%A9/%E9?q=%FF&r=%00 HTTP/1.1\r\nHost: app\r\n\r\n"),
]


def _send(port: int, raw: bytes) -> bytes:
    """One request on a fresh connection (asking the proxy to close it after), the whole answer."""
    line, _, rest = raw.partition(b"\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(line + b"\r\nConnection: close\r\n" + rest)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _what_puma_saw(response: bytes) -> Any:
    """The echo app's JSON (what Puma received), or the status line when proxylog answered."""
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    if b"application/json" not in head.lower() or not body:  # proxylog's own reply, or HEAD
        return status_line.decode()
    seen = orjson.loads(body.split(b"\r\n")[-3] if b"chunked" in head.lower() else body)
    seen["headers"].pop("HTTP_X_REQUEST_ID", None)  # generated per plane unless the client sent one
    return {"status": status_line.decode(), **seen}


def _normalised(record: dict[str, Any]) -> dict[str, Any]:
    record = orjson.loads(orjson.dumps(record))
    record.pop("@timestamp", None)
    record["event"].pop("duration", None)
    record.get("source", {}).pop("port", None)
    record.get("client", {}).pop("port", None)  # the client is the peer here: its port, as source.port
    record.get("proxylog", {}).pop("upstream", None)
    response = record.get("http", {}).get("response", {})
    response.pop("bytes", None)
    if record["http"]["request"]["id"] != "my-request_42@edge":
        record["http"]["request"].pop("id")
    return record


@pytest.fixture
def proxies(start_proxylog, puma: Puma) -> dict[str, Any]:
    return {engine: start_proxylog({**CONFIG, "engine": engine}) for engine in ("mitmproxy", "fast")}


@pytest.mark.engines("fast")  # one run: the test itself starts both planes
def test_both_planes_write_the_same_records_and_forward_the_same_requests(proxies: dict[str, Any]) -> None:
    seen: dict[str, dict[str, Any]] = {engine: {} for engine in proxies}
    for name, raw in CASES:
        for engine, proxy in proxies.items():
            seen[engine][name] = _what_puma_saw(_send(proxy.port, raw))
    records = {engine: proxy.access(count=len(CASES)) for engine, proxy in proxies.items()}
    for name, _ in CASES:
        assert seen["fast"][name] == seen["mitmproxy"][name], f"{name}: Puma saw different requests"
    by_path = {
        engine: {(r["url"].get("path"), r["url"].get("query")): _normalised(r) for r in recs}
        for engine, recs in records.items()
    }
    assert by_path["fast"].keys() == by_path["mitmproxy"].keys()
    for key, record in by_path["mitmproxy"].items():
        assert by_path["fast"][key] == record, f"records differ for {key}"


def _corpus_requests() -> list[tuple[str, bytes]]:
    """The CrowdSec hub's AppSec test requests (attacks and the benign ones beside them), as
    raw HTTP/1.1 requests with a unique marker in the query."""
    out = []
    path = Path(__file__).resolve().parents[1] / "data" / "crowdsec-appsec-requests.jsonl"
    for index, line in enumerate(path.read_bytes().splitlines()):
        case = orjson.loads(line)
        body = (case.get("body") or "").encode()
        target = case["path"].encode("utf-8", "surrogateescape")
        target += (b"&" if b"?" in target else b"?") + b"corpus=%d" % index
        method = (case.get("method") or "GET").encode()
        head = [b"%s %s HTTP/1.1" % (method, target), b"Host: app"]
        head += [f"{name}: {value}".encode() for name, value in case.get("headers", {}).items()]
        if body:
            head.append(b"Content-Length: %d" % len(body))
        out.append((f"corpus-{index}", b"\r\n".join(head) + b"\r\n\r\n" + body))
    return out


def _marker(record: dict[str, Any]) -> str:
    query = record["url"].get("query") or ""
    return query[query.rfind("corpus=") :]


@pytest.mark.engines("fast")  # one run: the test itself starts both planes
def test_an_attack_corpus_gets_the_same_answers_and_records_on_both_planes(proxies: dict[str, Any]) -> None:
    cases = _corpus_requests()
    seen: dict[str, dict[str, Any]] = {engine: {} for engine in proxies}
    for name, raw in cases:
        for engine, proxy in proxies.items():
            seen[engine][name] = _what_puma_saw(_send(proxy.port, raw))
    differ = [name for name, _ in cases if seen["fast"][name] != seen["mitmproxy"][name]]
    assert not differ, f"{len(differ)} of {len(cases)} differ, e.g. {differ[0]}: " + "\n".join(
        f"{engine}: {seen[engine][differ[0]]}" for engine in seen
    )
    records = {engine: proxy.access(count=len(cases)) for engine, proxy in proxies.items()}
    by_marker = {engine: {_marker(r): _normalised(r) for r in recs} for engine, recs in records.items()}
    assert by_marker["fast"].keys() == by_marker["mitmproxy"].keys()
    for key, record in by_marker["mitmproxy"].items():
        assert by_marker["fast"][key] == record, f"records differ for {key}"
