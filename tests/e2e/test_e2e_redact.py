"""End to end: canary secrets sent over loopback through a real `proxylog serve` in front of
real Puma never appear in any sink (file, stdout) or in proxylog's stderr."""

from __future__ import annotations

import base64
import secrets
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest

from tests._http import request
from tests._records import request_headers

pytestmark = pytest.mark.e2e

CAPTURED = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-auth-token",
    "referer",
    "accept",
    "x-note",
    "content-type",
]


def new_canary() -> str:
    return "Cn" + secrets.token_urlsafe(18).replace("-", "x").replace("_", "y") + "Zq"


def forms_of(canary: str) -> set[str]:
    """The canary raw, percent-encoded and base64-encoded (core of each alignment)."""
    forms = {canary, quote(canary, safe=""), quote_plus(canary)}
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + canary.encode()).decode()
        forms.add(encoded[(offset * 4 + 2) // 3 + 1 : -4])
    return forms


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_canaries_reach_puma_but_no_sink(start_proxylog: Any, tmp_path: Path) -> None:
    """Secrets in credential headers, cookies, query keys (any case, encoded, nested,
    repeated), userinfo, the path and JSON/form bodies reach Puma untouched, yet neither the
    file sink, stdout nor stderr carries them in any form; the rest of each record is intact."""
    file_sink = tmp_path / "records.jsonl"
    stdout_path = tmp_path / "stdout.jsonl"
    config = {
        "record": {"headers": CAPTURED},
        "redact": {"body": {"capture": True}},
        "sinks": [{"type": "file", "path": str(file_sink)}, {"type": "stdout"}],
    }
    canaries = [new_canary() for _ in range(6)]
    c_head, c_json, c_form, c_userinfo, c_jwt_id, c_cookie = canaries
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI" + c_jwt_id + "In0.c2lnbmF0dXJlLXZhbHVl"
    with stdout_path.open("wb") as stdout:
        proxy = start_proxylog(config=config, stdout=stdout)
        query = (
            f"Password={c_head}&%74oken={c_head}&user%5Bemail%5D={quote(c_head)}&page=2"
            f"&token={c_head}&X-Amz-Signature={c_head}"
        )
        got = request(
            proxy.url,
            f"/password_resets/{c_head}/edit?{query}",
            headers=[
                ("Authorization", f"Bearer {c_head}"),
                ("Proxy-Authorization", "Basic " + base64.b64encode(f"bob:{c_head}".encode()).decode()),
                ("Cookie", f"_app_session={c_cookie}; theme=dark"),
                ("X-Api-Key", c_head),
                ("X-Auth-Token", c_head),
                ("Referer", f"https://bob:{c_userinfo}@ref.example.com/p?sig={c_userinfo}&q=shoes"),
                ("Accept", "text/html"),
                ("X-Note", f"token in a header value: {jwt}"),
            ],
        )
        assert got.status == 200
        seen = got.json()["headers"]
        assert seen["HTTP_AUTHORIZATION"] == f"Bearer {c_head}"  # redaction is for logs only
        assert seen["HTTP_COOKIE"] == f"_app_session={c_cookie}; theme=dark"
        posted_json = request(
            proxy.url,
            "/users",
            method="POST",
            headers=[("Content-Type", "application/json")],
            body=orjson.dumps({"user": {"name": "ann", "credentials": [{"password": c_json}]}}),
        )
        posted_form = request(
            proxy.url,
            "/login",
            method="POST",
            headers=[("Content-Type", "application/x-www-form-urlencoded")],
            body=f"user%5Bpassword%5D={quote_plus(c_form)}&name=ann".encode(),
        )
        assert (posted_json.status, posted_form.status) == (200, 401)
        refused = raw_exchange(
            proxy.port,
            f"GET http://bob:{c_userinfo}@127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
        )
        assert refused.startswith(b"HTTP/1.1 400")
        assert proxy.stop() == 0

    file_lines = file_sink.read_bytes()
    stdout_lines = stdout_path.read_bytes()
    stderr = "\n".join(proxy.stderr_lines)
    for canary in canaries:
        for form in forms_of(canary):
            assert form.encode() not in file_lines, form
            assert form.encode() not in stdout_lines, form
            assert form not in stderr, form
    assert file_lines == stdout_lines

    records = {r["http"]["request"]["id"]: r for r in map(orjson.loads, file_lines.splitlines())}
    first = records[got.headers["X-Request-Id"]]
    assert first["url"]["path"] == "/password_resets/[REDACTED]/edit"
    assert first["url"]["query"] == (
        "Password=[REDACTED]&%74oken=[REDACTED]&user%5Bemail%5D=[REDACTED]&page=2"
        "&token=[REDACTED]&X-Amz-Signature=[REDACTED]"
    )
    assert request_headers(first) == {
        "authorization": "Bearer [REDACTED]",
        "proxy-authorization": "Basic [REDACTED]",
        "cookie": "_app_session=[REDACTED]; theme=[REDACTED]",
        "x-api-key": "[REDACTED]",
        "x-auth-token": "[REDACTED]",
        "referer": "https://[REDACTED]@ref.example.com/p?sig=[REDACTED]&q=shoes",
        "accept": "text/html",
        "x-note": "token in a header value: [REDACTED]",
    }
    assert first["url"]["domain"] == "127.0.0.1" and first["client"]["ip"] == "127.0.0.1"
    body = records[posted_json.headers["X-Request-Id"]]["http"]["request"]["body"]
    expected = {"user": {"name": "ann", "credentials": [{"password": "[REDACTED]"}]}}
    assert orjson.loads(body["content"]) == expected
    form = records[posted_form.headers["X-Request-Id"]]["http"]["request"]["body"]["content"]
    assert orjson.loads(form) == {"user[password]": "[REDACTED]", "name": "ann"}
