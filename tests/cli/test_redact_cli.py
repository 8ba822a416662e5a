"""`proxylog redact-test`: the record an operator would get, and clear errors for bad input."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import orjson
import pytest

from proxylog.cli import main
from tests._records import request_headers, response_headers


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["redact-test", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "proxylog.yaml"
    path.write_text(text)
    return str(path)


def test_a_url_with_secrets_prints_the_redacted_record(capsys: pytest.CaptureFixture[str]) -> None:
    """The printed record has the query secret masked, and stderr names the changed fields."""
    code, out, err = run(
        ["--compact", "https://app.example.com/password_resets/Tk9x/edit?token=abc&page=2"], capsys
    )
    assert code == 0
    doc = orjson.loads(out)
    assert doc["url"] == {
        "path": "/password_resets/[REDACTED]/edit",
        "query": "token=[REDACTED]&page=2",
        "original": "/password_resets/[REDACTED]/edit?token=[REDACTED]&page=2",
        "domain": "app.example.com",
        "scheme": "https",
    }
    assert "abc" not in out and "Tk9x" not in out
    assert "redacted: url.original, url.path, url.query" in err


def test_headers_and_bodies_follow_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Captured headers and body capture come from the config given with --config."""
    config = write_config(
        tmp_path,
        "record: {headers: [authorization, cookie, content-type]}\nredact: {body: {capture: true}}\n",
    )
    code, out, _ = run(
        [
            "-c",
            config,
            "--compact",
            "-H",
            "Authorization: Bearer abcdefgh",
            "-H",
            "Cookie: s=1; locale=de",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"user": {"password": "pw", "name": "Ann"}}',
            "http://app.example.com/users",
        ],
        capsys,
    )
    assert code == 0
    doc = orjson.loads(out)
    request = doc["http"]["request"]
    assert request["method"] == "POST"
    assert request_headers(doc) == {
        "authorization": "Bearer [REDACTED]",
        "cookie": "s=[REDACTED]; locale=[REDACTED]",
        "content-type": "application/json",
    }
    assert orjson.loads(request["body"]["content"]) == {"user": {"password": "[REDACTED]", "name": "Ann"}}


def test_uncaptured_headers_are_pointed_out(capsys: pytest.CaptureFixture[str]) -> None:
    """Headers the config does not capture are named on stderr, with the flag that shows them."""
    code, out, err = run(["-H", "X-Api-Key: k", "http://app.example.com/"], capsys)
    assert code == 0 and "x-api-key" not in out
    assert "not captured" in err and "x-api-key" in err
    code, out, _ = run(
        ["--all-headers", "--compact", "-H", "X-Api-Key: k", "http://app.example.com/"], capsys
    )
    assert request_headers(orjson.loads(out))["x-api-key"] == "[REDACTED]"


def test_userinfo_is_sent_as_basic_auth_like_curl(capsys: pytest.CaptureFixture[str]) -> None:
    """A URL's user:password becomes an Authorization header, which is redacted."""
    code, out, err = run(["--all-headers", "--compact", "http://bob:hunter2@app.example.com/"], capsys)
    assert code == 0
    assert request_headers(orjson.loads(out))["authorization"] == "Basic [REDACTED]"
    assert "hunter2" not in out and "Ym9iOmh1bnRlcjI" not in out
    assert "Authorization: Basic" in err


def test_a_raw_request_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--raw - reads a whole HTTP/1.1 request, headers and body, from stdin."""
    raw = (
        b"POST /login?next=%2F HTTP/1.1\r\nHost: app.example.com:8080\r\nUser-Agent: curl/8\r\n"
        b"Referer: https://app.example.com/login?email=a%40b.c\r\n\r\npassword=x"
    )
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    code, out, _ = run(["--raw", "-", "--compact"], capsys)
    assert code == 0
    doc = orjson.loads(out)
    assert doc["url"]["domain"] == "app.example.com"
    assert request_headers(doc)["referer"] == "https://app.example.com/login?email=[REDACTED]"
    assert doc["user_agent"]["original"] == "curl/8"


def test_response_headers_can_be_tried(capsys: pytest.CaptureFixture[str]) -> None:
    """--response-header shows how Set-Cookie and Location would be logged."""
    code, out, _ = run(
        [
            "--compact",
            "--all-headers",
            "--response-header",
            "Set-Cookie: _s=abc; Path=/; HttpOnly",
            "--response-header",
            "Location: /reset?reset_password_token=zz",
            "http://app.example.com/",
        ],
        capsys,
    )
    assert code == 0
    assert response_headers(orjson.loads(out)) == {
        "set-cookie": "_s=[REDACTED]; Path=/; HttpOnly",
        "location": "/reset?reset_password_token=[REDACTED]",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a URL"),
        (["ftp://example.com/"], "expected an http(s) URL"),
        (["http://[::1/"], "not a valid URL"),
        (["-H", "no colon here", "http://a/"], "-H expects 'Name: value'"),
        (["-X", "GE T", "http://a/"], "-X expects an HTTP method"),
        (["--data-file", "/nonexistent/body", "http://a/"], "cannot read /nonexistent/body"),
        (["--raw", "/nonexistent/req"], "cannot read /nonexistent/req"),
        (["--raw", "-", "http://a/"], "--raw takes the whole request"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each kind of bad input is refused with exit status 2 and says what is wrong."""
    code, out, err = run(args, capsys)
    assert code == 2
    assert out == ""
    assert message in err


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"GARBAGE\r\n\r\n", "request line"),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", "line 2 is not a header line"),
        (b"GET ftp://x/ HTTP/1.1\r\n\r\n", "must be a path or an absolute http(s) URL"),
    ],
)
def test_bad_raw_requests_exit_2(
    raw: bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed raw request is refused with exit status 2 naming the problem."""
    path = tmp_path / "request.txt"
    path.write_bytes(raw)
    code, _, err = run(["--raw", str(path)], capsys)
    assert code == 2
    assert message in err


def test_an_invalid_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config error is reported with its key path and exit status 2."""
    config = write_config(tmp_path, "redact: {paths: ['(']}\n")
    code, _, err = run(["-c", config, "http://a/"], capsys)
    assert code == 2
    assert "redact.paths[0]" in err


def test_a_target_with_userinfo_is_not_logged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An absolute-form target with userinfo gets a 400 from proxylog and no record: the
    command says so instead of printing one."""
    path = tmp_path / "request.txt"
    path.write_bytes(b"GET http://bob:pw@app.example.com/ HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
    code, out, err = run(["--raw", str(path)], capsys)
    assert code == 0 and out == ""
    assert "logs nothing" in err
