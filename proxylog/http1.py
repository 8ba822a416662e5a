"""Plane-neutral HTTP/1 rules: which request heads proxylog refuses, and its own replies.

Both data planes (mitmproxy's and the fast one) find a request head's end with
`empty_lines_at` and `find_head_end`, call `check_head` on its raw bytes, record a refused head
from `lenient_head` and send `make_reply`'s bytes, so a client is refused identically, with the
same reason and byte counts in the record, whichever plane it reached. Patterns over request
bytes use re2 or plain bytes methods (linear time whatever the client sends), never the stdlib `re`.
"""

from __future__ import annotations

import re2

# RFC 9110 §5.6.2 tchar.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# The whole clean head in one linear-time match: request-line, token-named fields whose
# content (OWS and value) is HTAB, SP, VCHAR or obs-text, CRLF line endings throughout.
# Everything else (obs-fold, whitespace before a colon, bare CR/LF, control bytes, other
# versions) fails here and is diagnosed by the slow path below.
_BYTES = re2.Options()
_BYTES.encoding = re2.Options.Encoding.LATIN1  # match bytes, not UTF-8 sequences
_BYTES.never_capture = True
# Request-target bytes: visible ASCII except `"`, `<` and `>`, which no URI may hold (RFC 3986
# §2) and which Puma answers with a bare 400, after which it stalls a kept-alive connection.
_TARGET = rb"[\x21\x23-\x3b\x3d\x3f-\x7e]+"
_CLEAN_HEAD = re2.compile(
    _TOKEN + rb" " + _TARGET + rb" HTTP/1\.[01]\r\n(?:" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n",
    _BYTES,
)
_VERSION_SHAPE = re2.compile(rb"HTTP/[0-9]\.[0-9]", _BYTES)
_BARE_CR = re2.compile(rb"\r[^\n]", _BYTES)  # a CR that is not the start of a CRLF
_EMPTY_LINES = re2.compile(rb"(?:\r?\n)*", _BYTES)
_LINE_BYTES = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
_TARGET_BYTES = bytes(b for b in range(0x21, 0x7F) if b not in b'"<>')
# reg-name, IP-literal and port characters (RFC 3986 §3.2.2), what Puma may see as the host.
_HOST_BYTES = b"-._~!$&'()*+,;=:[]%0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_MAX_LENGTH_DIGITS = 18  # below 2**63: every plane and Puma parse it the same way
_MAX_REASON = 100
_MAX_LENIENT_FIELDS = 100
# Rack turns both "-" and "_" into "_" (HTTP_CONTENT_LENGTH), so these would reach the app as
# framing headers proxylog did not frame by.
_UNDERSCORE_SPELLINGS = (
    (b"\ncontent_length:", "Content-Length"),
    (b"\ntransfer_encoding:", "Transfer-Encoding"),
)


def check_head(raw_head: bytes) -> str | None:
    """Why a request head must be refused with 400 (a reason of at most ~100 characters), or
    None when it is acceptable. `raw_head` is the head exactly as received, from the request
    line through the empty line that ends it (empty lines before the request line dropped).
    Pure; never raises."""
    if _CLEAN_HEAD.fullmatch(raw_head) is None:
        return _diagnose(raw_head)[:_MAX_REASON]
    return _semantics(raw_head)


def _diagnose(raw: bytes) -> str:
    """The first syntax error of a head the clean-head pattern rejected (the slow path, so it
    may walk the lines); a generic reason if it finds none."""
    if raw.endswith(b"\r"):  # what find_head_end ends at a bare CR
        index = raw.count(b"\n")
        return f"bare CR in {'request line' if index == 0 else f'header {index}'}"
    if not raw.endswith(b"\n"):
        return "incomplete request head"
    lines = raw.split(b"\n")[:-1]  # raw ends with LF, so the last piece is empty
    last = len(lines) - 1
    for index, line in enumerate(lines):
        where = "request line" if index == 0 else "end of head" if index == last else f"header {index}"
        if not line.endswith(b"\r"):
            return f"bare LF in {where}"
        line = line[:-1]
        if b"\r" in line:
            return f"bare CR in {where}"
        if index == last:
            return "empty request" if index == 0 else "malformed request head"
        if b"\0" in line:
            return f"NUL in {where}"
        if line.translate(None, _LINE_BYTES):
            return f"control byte in {where}"
        reason = _request_line(line) if index == 0 else _field_line(line, where)
        if reason is not None:
            return reason
    return "malformed request head"


def _request_line(line: bytes) -> str | None:
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        return "malformed request line"
    method, target, version = parts
    if method.translate(None, _TCHAR):
        return "invalid method"
    if target.translate(None, _TARGET_BYTES):
        return "invalid byte in request-target"
    if version in (b"HTTP/1.0", b"HTTP/1.1"):
        return None
    if _VERSION_SHAPE.fullmatch(version) is not None:
        return f"unsupported HTTP version {version.decode('ascii')}"
    return "invalid HTTP version"


def _field_line(line: bytes, where: str) -> str | None:
    if line[:1] in (b" ", b"\t"):
        return f"obs-fold in {where}"
    name, colon, _ = line.partition(b":")
    if not colon:
        return f"no colon in {where}"
    if not name:
        return f"empty name in {where}"
    if name[-1:] in (b" ", b"\t"):
        return f"whitespace before colon in {where}"
    if name.translate(None, _TCHAR):
        return f"invalid name in {where}"
    return None


def _semantics(raw: bytes) -> str | None:
    """Request-line form, framing and Host rules of a syntactically clean head: bytes finds on
    the lower-cased head (every field line starts after a CRLF, its name ends at the colon)."""
    line_end = raw.find(b"\r\n")
    method, target, version = raw[:line_end].split(b" ")
    if method == b"CONNECT":
        return "CONNECT is not supported"
    if target[0] != 0x2F:  # not origin-form ("/...")
        if target == b"*":
            if method != b"OPTIONS":
                return "asterisk-form request-target without OPTIONS"
        elif not target[:8].lower().startswith((b"http://", b"https://")):
            return "invalid request-target"
        else:
            authority = target.split(b"://", 1)[1].split(b"/", 1)[0].split(b"?", 1)[0]
            if b"@" in authority:  # RFC 9110 §4.2.4: userinfo in a target is an error
                return "userinfo in request-target"
            if not authority or authority.translate(None, _HOST_BYTES):
                return "invalid authority in request-target"
    low = raw.lower()
    if b"_" in low:
        for spelling, name in _UNDERSCORE_SPELLINGS:
            at = low.find(spelling)
            if at >= 0:
                return f"underscore spelling of {name} in {_header_number(low, at)}"
    length = low.find(b"\ncontent-length:")
    coding = low.find(b"\ntransfer-encoding:")
    if length >= 0:
        again = low.find(b"\ncontent-length:", length + 1)
        if again >= 0:
            return f"duplicate Content-Length in {_header_number(low, again)}"
        value = _value(raw, length + 16)
        if not (value.isdigit() and value.isascii()):
            return f"non-numeric Content-Length in {_header_number(low, length)}"
        if len(value.lstrip(b"0")) > _MAX_LENGTH_DIGITS:
            return f"Content-Length too large in {_header_number(low, length)}"
    if coding >= 0:
        again = low.find(b"\ntransfer-encoding:", coding + 1)
        if again >= 0:
            return f"duplicate Transfer-Encoding in {_header_number(low, again)}"
        if _value(low, coding + 19) != b"chunked":
            return f"Transfer-Encoding other than chunked in {_header_number(low, coding)}"
        if version == b"HTTP/1.0":
            return "Transfer-Encoding in an HTTP/1.0 request"
        if length >= 0:
            return "Content-Length and Transfer-Encoding together"
    host = low.find(b"\nhost:")
    if host < 0:  # absolute-form names the host itself (RFC 9112 §3.2.2)
        return "missing Host header" if version == b"HTTP/1.1" and target[0] == 0x2F else None
    if low.find(b"\nhost:", host + 1) >= 0:
        return "more than one Host header"
    if _value(raw, host + 6).translate(None, _HOST_BYTES):
        return "invalid Host header"
    return None


def _value(raw: bytes, start: int) -> bytes:
    """The field value starting at `start` (just after the colon), OWS stripped."""
    return raw[start : raw.find(b"\r", start)].strip(b" \t")


def _header_number(low: bytes, at: int) -> str:
    """ "header N" for the field line that starts after the LF at offset `at`."""
    return f"header {low.count(b'\n', 0, at + 1)}"


def empty_lines_at(data: bytes | bytearray) -> int:
    """How many bytes of empty lines (CRLF or a bare LF) start `data`: RFC 9112 §2.2 lets a
    server skip them before a request line. One re2 match (a loop over the lines in Python
    made a head of empty lines cost a hundred times more than any other head)."""
    found = _EMPTY_LINES.match(data)
    return 0 if found is None else found.end()


def find_head_end(data: bytes | bytearray, start: int = 0) -> int:
    """The offset just past the empty line that ends a head in `data` (searching from
    `start`), or -1. A head ended by bare LFs counts as ended too, so that it is refused at
    once rather than when the header timeout expires. So does one with a bare CR (a CR
    followed by anything but LF), ending just past it: with bare-CR line endings no empty
    line ever ends the head."""
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        return end + 4
    ends = [i + n for i, n in ((data.find(b"\n\n", start), 2), (data.find(b"\n\r\n", start), 3)) if i >= 0]
    if ends:
        return min(ends)
    bare = _BARE_CR.search(data, start)
    return -1 if bare is None else bare.start() + 1


def lenient_head(raw: bytes) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]]] | None:
    """Best-effort request line and fields of a refused or incomplete head, for its record;
    None when the request line is unreadable (not three parts, or the method no token)."""
    first, _, rest = raw.partition(b"\n")
    parts = first.removesuffix(b"\r").split(b" ")
    if len(parts) != 3 or not all(parts) or parts[0].translate(None, _TCHAR):
        return None
    headers: list[tuple[bytes, bytes]] = []
    for line in rest.split(b"\n"):
        name, colon, value = line.removesuffix(b"\r").partition(b":")
        if colon and name and not name.translate(None, _TCHAR):
            headers.append((name, value.strip(b" \t")))
            if len(headers) >= _MAX_LENIENT_FIELDS:
                break
    return parts[0], parts[1], parts[2], headers


# Chunked request bodies (RFC 9112 §7.1), read strictly by both planes.
_HEX = b"0123456789abcdefABCDEF"
# chunk-ext is `;name[=value]` pairs; any visible ASCII, SP or HTAB is let through verbatim
# (quoted strings included), control bytes and obs-text are not.
_EXT_BYTES = bytes([9, *range(0x20, 0x7F)])
_MAX_SIZE_DIGITS = 16
_MAX_SIZE = 2**63 - 1
MAX_CHUNK_LINE = 4096  # a chunk-size line (with extensions) longer than this is refused


class ChunkError(ValueError):
    """The chunked framing is invalid; str(error) is the reason for the record."""


def chunk_size(line: bytes | bytearray) -> int:
    """The size on a chunk-size line (without its LF); raises ChunkError for framing that
    another parser could read differently: bare CR/LF, `0x`/signed/padded sizes, sizes of
    2**63 and above, control bytes in extensions."""
    if not line.endswith(b"\r"):
        raise ChunkError("bare LF in chunk size line")
    line = line[:-1]
    if b"\r" in line:
        raise ChunkError("bare CR in chunk size line")
    digits, semicolon, extension = line.partition(b";")
    if not digits or digits.translate(None, _HEX):
        raise ChunkError("invalid chunk size")
    if semicolon and extension.translate(None, _EXT_BYTES):
        raise ChunkError("control byte in chunk extension")
    digits = digits.lstrip(b"0") or b"0"
    if len(digits) > _MAX_SIZE_DIGITS or int(digits, 16) > _MAX_SIZE:
        raise ChunkError("chunk size too large")
    return int(digits, 16)


# proxylog's own replies, the same bytes on every data plane (408: the fast plane's request
# timeouts).
REPLIES = {
    400: (b"Bad Request", b"400 Bad Request\n"),
    408: (b"Request Timeout", b"408 Request Timeout\n"),
    413: (b"Content Too Large", b"413 Content Too Large\n"),
    431: (b"Request Header Fields Too Large", b"431 Request Header Fields Too Large\n"),
    503: (b"Service Unavailable", b"503 Service Unavailable: shutting down.\n"),
    403: (b"Forbidden", b"403 Forbidden\n"),
    429: (b"Too Many Requests", b"429 Too Many Requests: slow down.\n"),
    502: (b"Bad Gateway", b"502 Bad Gateway: the application did not answer.\n"),
    504: (b"Gateway Timeout", b"504 Gateway Timeout: the application took too long.\n"),
}


def make_reply(
    status: int, request_id: str, head_only: bool, *, retry_after: int | None = None, body: str | None = None
) -> bytes:
    """A complete HTTP/1.1 response from proxylog itself that closes the connection (no
    X-Request-Id header when `request_id` is empty). Raises UnicodeEncodeError for a
    non-ASCII `request_id`."""
    reason, default_body = REPLIES.get(status, (b"Error", b"%d\n" % status))
    content = default_body if body is None else body.encode("utf-8")
    extra = b"retry-after: %d\r\n" % retry_after if retry_after is not None else b""
    if request_id:
        extra = b"x-request-id: %s\r\n%s" % (request_id.encode("ascii"), extra)
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"%sconnection: close\r\n\r\n" % (status, reason, len(content), extra)
    )
    return head if head_only else head + content
