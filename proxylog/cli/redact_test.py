"""`proxylog redact-test`: show how a request would be logged under a config, redacted.

The request comes from the command line (a URL, ``-H`` headers, ``-d`` body, curl-style) or
as a raw HTTP/1.1 request (``--raw FILE``, ``-`` for stdin). The record is built the way the
proxy builds it (the config's captured headers, body capture, field caps), redacted by the
config's Redactor, and printed; stderr lists which fields redaction changed.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from proxylog.config import Config, load_config
from proxylog.identity import TrustedProxies
from proxylog.pipeline import Exchange, RequestHead
from proxylog.pipeline.headers import open_exchange, response_fields
from proxylog.pipeline.records import record_for as record_for_exchange
from proxylog.record import AccessRecord, encode_record, flatten, to_ecs
from proxylog.redact import Redactor
from proxylog.redact.bodies import build_body_parser

EXIT_OK = 0
EXIT_INVALID = 2
# Logged in their own fields, whatever record.headers says.
_NOT_HEADERS = frozenset({"host", "user-agent", "x-request-id"})

EPILOG = """\
examples:
  proxylog redact-test --config proxylog.yaml 'https://app.example.com/users?token=abc&page=2'
  proxylog redact-test -c proxylog.yaml -H 'Authorization: Bearer eyJ…' -H 'Cookie: _s=1; locale=de' \\
      https://app.example.com/
  proxylog redact-test -c proxylog.yaml -X POST -H 'Content-Type: application/json' \\
      -d '{"user": {"email": "a@example.com", "password": "x"}}' https://app.example.com/users
  proxylog redact-test -c proxylog.yaml --raw request.txt      # a raw HTTP/1.1 request; - for stdin

Only headers listed in record.headers and record.response_headers are captured, as in the
proxy (--all-headers captures every header given). Bodies appear only with
redact.body.capture on. Exit 0 when the record was printed, 2 for bad input or an invalid
config.
"""


class InputError(ValueError):
    """The request given on the command line or in --raw cannot be used."""


@dataclass
class TestRequest:
    """A request as the proxy would receive it (headers in order, body bytes)."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    scheme: str = "http"
    body: bytes = b""
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def register(commands: Any) -> None:
    """Add ``proxylog redact-test`` to the `proxylog` subcommands."""
    parser = commands.add_parser(
        "redact-test",
        help="show how a request would be logged (redacted) under a config",
        description="Build the access record proxylog would write for a request, redact it with "
        "the config's rules, and print it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", metavar="URL", nargs="?", help="absolute URL, or a path with -H 'Host: …'")
    parser.add_argument("--config", "-c", metavar="FILE", help="proxylog config (default: built-in defaults)")
    parser.add_argument("--request", "-X", metavar="METHOD", help="method (default GET, POST with -d)")
    parser.add_argument(
        "--header", "-H", metavar="'NAME: VALUE'", action="append", default=[], help="a header; repeatable"
    )
    parser.add_argument(
        "--response-header",
        metavar="'NAME: VALUE'",
        action="append",
        default=[],
        help="a response header to log as well (e.g. Set-Cookie, Location); repeatable",
    )
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--data", "-d", metavar="BODY", help="request body")
    body.add_argument("--data-file", metavar="FILE", help="request body from a file (- for stdin)")
    parser.add_argument("--raw", metavar="FILE", help="a raw HTTP/1.1 request instead (- for stdin)")
    parser.add_argument("--client-ip", default="127.0.0.1", help="the client address (default 127.0.0.1)")
    parser.add_argument(
        "--all-headers", action="store_true", help="capture every header given, not only record.headers"
    )
    parser.add_argument("--compact", action="store_true", help="one line, exactly as a sink receives it")
    parser.set_defaults(func=cmd_redact_test)


def cmd_redact_test(args: argparse.Namespace) -> int:
    """Print the redacted record for the request described by `args`."""
    config = load_config(args.config) if args.config else Config()
    try:
        request = _request_from_args(args)
        record = record_for(request, config, client_ip=args.client_ip, all_headers=args.all_headers)
    except InputError as e:
        print(f"proxylog redact-test: {e}", file=sys.stderr)
        return EXIT_INVALID
    if not args.all_headers:
        skipped = sorted(
            ({n.lower() for n, _ in request.headers} - set(config.record.headers) - _NOT_HEADERS)
            | ({n.lower() for n, _ in request.response_headers} - set(config.record.response_headers))
        )
        if skipped:
            names = ", ".join(skipped)
            request.notes.append(f"not captured (not in record.headers; try --all-headers): {names}")
    for note in request.notes:
        print(f"note: {note}", file=sys.stderr)
    if record is None:
        return EXIT_OK
    redacted = Redactor(config.redact)(record)
    line = encode_record(redacted, config.record.schema)
    if not args.compact:
        line = orjson.dumps(orjson.loads(line), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    sys.stdout.buffer.write(line)
    sys.stdout.flush()
    changed = changed_fields(record, redacted)
    print(f"redacted: {', '.join(changed) if changed else 'nothing'}", file=sys.stderr)
    return EXIT_OK


def _request_from_args(args: argparse.Namespace) -> TestRequest:
    if args.raw is not None:
        if args.url or args.header or args.data is not None or args.data_file:
            raise InputError("--raw takes the whole request: give no URL, -H, -d or --data-file with it")
        request = parse_raw(_read(args.raw))
    elif args.url is None:
        raise InputError("give a URL (or --raw FILE)")
    else:
        body = args.data.encode("utf-8") if args.data is not None else b""
        if args.data_file:
            body = _read(args.data_file)
        method = args.request or ("POST" if body else "GET")
        request = request_from_url(method, args.url, [_header(h, "-H") for h in args.header], body)
    request.response_headers = [_header(h, "--response-header") for h in args.response_header]
    return request


def _read(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e


def _header(text: str, option: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    name = name.strip()
    if not colon or not name or any(c in name for c in ' \t"(),/;<=>?@[\\]{}'):
        raise InputError(f"{option} expects 'Name: value' with a valid header name")
    return name, value.strip()


def request_from_url(method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> TestRequest:
    """A request for `url` as curl would send it: userinfo becomes ``Authorization: Basic``."""
    if not method.isascii() or not method.isalpha():
        raise InputError("-X expects an HTTP method such as GET or POST")
    notes: list[str] = []
    scheme = "http"
    if url.startswith("/"):
        target = url
    else:
        try:
            parts = urlsplit(url)
            host = parts.hostname
            port = parts.port
        except ValueError as e:
            raise InputError(f"not a valid URL: {e}") from None
        if parts.scheme not in ("http", "https") or not host:
            raise InputError("expected an http(s) URL like https://app.example.com/path, or a path")
        scheme = parts.scheme
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        has = {name.lower() for name, _ in headers}
        if "host" not in has:
            authority = f"[{host}]" if ":" in host else host
            headers.insert(0, ("Host", f"{authority}:{port}" if port else authority))
        if parts.username is not None or parts.password is not None:
            if "authorization" not in has:
                credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
                headers.append(("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode()))
            notes.append("the URL's userinfo is sent as Authorization: Basic, as curl does")
    return TestRequest(method.upper(), target, headers, scheme, body, notes=notes)


def parse_raw(data: bytes) -> TestRequest:
    """A raw HTTP/1.x request: request line, header lines, blank line, body."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, body = data.partition(separator)
        if found:
            break
    else:
        head, body = data, b""
    lines = head.decode("utf-8", "backslashreplace").replace("\r\n", "\n").split("\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise InputError("the first line must be a request line like 'GET /path HTTP/1.1'")
    method, target, _ = parts
    headers = []
    for number, line in enumerate(lines[1:], start=2):
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or name != name.strip():
            raise InputError(f"line {number} is not a header line 'Name: value'")
        headers.append((name, value.strip()))
    request = TestRequest(method, target, headers, body=body)
    if not target.startswith("/"):
        scheme, sep, rest = target.partition("://")
        authority, slash, path = rest.partition("/")
        if not sep or scheme.lower() not in ("http", "https"):
            raise InputError("the request target must be a path or an absolute http(s) URL")
        if "@" in authority:
            request.notes.append("proxylog answers 400 to a request target with userinfo and logs nothing")
            request.target = ""
            return request
        request.target = slash + path if slash else "/"
        request.scheme = scheme.lower()
        if not any(name.lower() == "host" for name, _ in headers):
            headers.insert(0, ("Host", authority))
    return request


def record_for(
    request: TestRequest, config: Config, *, client_ip: str = "127.0.0.1", all_headers: bool = False
) -> AccessRecord | None:
    """The unredacted record the proxy would build for `request` (None: it would log none),
    through the pipeline's own header pass and record builder."""
    if not request.target:
        return None
    spec = config.record
    if all_headers:
        spec = replace(
            spec,
            headers=tuple(dict.fromkeys(n.lower() for n, _ in request.headers)),
            response_headers=tuple(dict.fromkeys(n.lower() for n, _ in request.response_headers)),
        )
    head = RequestHead(
        method=request.method.encode("utf-8", "surrogateescape"),
        target=request.target.encode("utf-8", "surrogateescape"),
        version=b"HTTP/1.1",
        headers=_fields(request.headers),
        peer=(client_ip, 0),
        tls=request.scheme == "https",
        started=time.time(),
    )
    ex: Exchange = open_exchange(head, TrustedProxies(()), spec)
    ex.request_body_bytes = len(request.body)
    ex.request_content = request.body or None
    if request.response_headers:
        response_fields(ex, _fields(request.response_headers), spec)
        ex.status = 200
    return record_for_exchange(ex, spec, body_parser=build_body_parser(config.redact))


def _fields(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1", "replace"), v.encode("utf-8", "surrogateescape")) for n, v in headers]


def changed_fields(before: AccessRecord, after: AccessRecord) -> list[str]:
    """The dotted record fields redaction changed (values are never shown)."""
    old, new = flatten(to_ecs(before)), flatten(to_ecs(after))
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
