"""The Redactor: compiled once per config, applied to every record before anything else sees
it (Runtime.emit). It never raises: if redaction itself fails, the record's request fields
are withheld (fail closed) and the failure is logged without any of the record's text.

Two passes. Key-based redaction (credential headers, cookies, parameter keys in the query,
URLs and bodies, userinfo) is plain string splitting. Path patterns and value detectors are
re2, and one re2 search over all of the record's text (the prefilter) decides whether they
need to run at all, so a request with nothing to hide costs that one search.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

import orjson
import re2

from proxylog.config.redact import RedactSpec, re2_options
from proxylog.record import AccessRecord
from proxylog.redact.keys import CACHE_SIZE, MASK, action_for
from proxylog.redact.text import TextRedactor, url_path_span

logger = logging.getLogger("proxylog.redact")

Headers = tuple[tuple[str, str], ...]
Cleaner = Callable[[str, str], str | None]

# Headers whose values are client addresses: anonymised too when `anonymize_ip` is on.
IP_HEADERS = frozenset(
    {
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
        "true-client-ip",
        "client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-original-forwarded-for",
        "x-envoy-external-address",
    }
)
IPV4_PREFIX = 24
IPV6_PREFIX = 48
MAX_BODY_DEPTH = 64
CLEAN_CACHE_SIZE = 512
MIN_SECRET_DIGITS = 13  # the shortest card number; a shorter JSON number is not scanned
MAX_EXACT_FLOAT = 2.0**53  # below it, an integral float holds exactly the digits it was sent with
FAILED_TAG = "redaction_failed"
_UUID_CHARS = frozenset("0123456789abcdefABCDEF-")


class Redactor:
    """`redactor(record)` returns the record as it may be logged: the same object when
    nothing needed redacting, else a copy. Cheap per call; the expensive part is `__init__`."""

    def __init__(self, spec: RedactSpec) -> None:
        self.spec = spec
        self.text = TextRedactor(spec)
        self.failures = 0
        self._act_body = action_for(spec, "body")
        self._anonymize = spec.anonymize_ip
        self._ips: dict[str, str] = {}
        self._clean: dict[str, None] = {}
        self._ip_tokens = re2.compile(r"[0-9A-Fa-f:.]{2,}", re2_options())

    def __call__(self, record: AccessRecord) -> AccessRecord:
        try:
            return self._redact(record)
        except Exception as e:  # fail closed, and say nothing the record held
            self.failures += 1
            logger.error("redaction failed (%s); the record's request fields are withheld", type(e).__name__)
            return self._withheld(record)

    def _redact(self, record: AccessRecord) -> AccessRecord:
        """The common case in one pass: no header redacted by name, and one re2 search over
        the record's text proving that nothing in it needs redacting. Header values seen in
        an earlier such search (Accept, User-Agent, …; they repeat) are known clean and
        skipped: a text is clean alone if it was clean on its own line of a joined search."""
        if record.request_body is not None or record.error_message or "@" in record.domain:
            return self.full(record)
        texts = [record.path, record.query or "", record.request_id]
        fresh: list[str] = []
        clean = self._clean
        known = self.text.plain_headers
        for headers in (record.request_headers, record.response_headers):
            for name, value in headers:
                if not (known.get(name) or self.text.plain_header(name)):
                    return self.full(record)  # a credential or cookie header
                if self._anonymize and name in IP_HEADERS:
                    return self.full(record)
                if value not in clean:
                    fresh.append(value)
        for text in (record.user_agent, record.domain):
            if text and text not in clean:
                fresh.append(text)
        if self.text.paths_anchored:
            texts += [_url_path(v) for _, v in (*record.request_headers, *record.response_headers)]
        if self.text.may_need_any("\n".join(texts + fresh).encode("utf-8", "surrogatepass")):
            return self.full(record)
        if fresh and not self.text.paths_anchored:
            if len(clean) + len(fresh) > CLEAN_CACHE_SIZE:
                clean.clear()
            clean.update(dict.fromkeys(fresh))
        if self._anonymize:
            return record._replace(
                client_ip=self.anonymize_ip(record.client_ip), source_ip=self.anonymize_ip(record.source_ip)
            )
        return record

    def clean_text(self, text: str) -> str:
        """Free text (a log line, an error message) with credential header lines, URL
        userinfo, secret ``key=value`` pairs, path tokens and detected secrets redacted.
        Never raises: on failure the whole text is withheld."""
        try:
            return self.text.free(text)
        except Exception:
            self.failures += 1
            return MASK

    def full(self, record: AccessRecord) -> AccessRecord:
        """Redact without the nothing-to-hide shortcut: key-based redaction, then path
        patterns and detectors if their prefilter matches. Tests check both paths agree."""
        text = self.text
        request_headers = self._headers(record.request_headers, self._header)
        response_headers = self._headers(record.response_headers, self._header)
        query = record.query
        if query and "=" in query:
            query = text.pairs(query)
        domain = text.domain(record.domain)
        user_agent = record.user_agent
        if user_agent:
            user_agent = text.text(user_agent)
        body = record.request_body
        if body is not None:
            body = self._body(body, 0)
        error = record.error_message
        if error:
            error = text.free(error)  # rare: a full pass, not worth a prefilter
        path = record.path
        if "=" in path:  # path parameters: /account;jsessionid=…
            path = text.pairs(path)
        if "@" in path:  # a URL in the path: /redirect/https://user:pass@host/
            path = text.userinfo(path)
        request_id = record.request_id

        blob = self._blob(path, query, user_agent, request_id, request_headers, response_headers, body)
        if text.may_need_scan(blob + b"\n" + domain.encode("utf-8", "surrogatepass")):
            path = text.scan(path)
            query = text.scan(query) if query else query
            domain = text.scan(domain)
            user_agent = text.scan(user_agent) if user_agent else user_agent
            request_id = text.scan(request_id)
            request_headers = self._headers(request_headers, self._scan_header)
            response_headers = self._headers(response_headers, self._scan_header)
            if body is not None:
                body = self._scan_body(body, 0)

        changes: dict[str, Any] = {}
        for name, new, old in (
            ("path", path, record.path),
            ("query", query, record.query),
            ("domain", domain, record.domain),
            ("user_agent", user_agent, record.user_agent),
            ("request_id", request_id, record.request_id),
            ("request_headers", request_headers, record.request_headers),
            ("response_headers", response_headers, record.response_headers),
            ("request_body", body, record.request_body),
            ("error_message", error, record.error_message),
        ):
            if new is not old and new != old:
                changes[name] = new
        if self._anonymize:
            changes["client_ip"] = self.anonymize_ip(record.client_ip)
            changes["source_ip"] = self.anonymize_ip(record.source_ip)
        return record._replace(**changes) if changes else record

    def _blob(
        self,
        path: str,
        query: str | None,
        user_agent: str | None,
        request_id: str,
        request_headers: Headers,
        response_headers: Headers,
        body: Any,
    ) -> bytes:
        """Every text of the record on its own line (and, when a path pattern is anchored,
        the path of each URL-like header value on one more) for a prefilter search. The
        domain is checked apart: it only needs the scan pass."""
        texts = [path, query or "", user_agent or "", request_id]
        texts += [value for _, value in request_headers]
        texts += [value for _, value in response_headers]
        if self.text.paths_anchored:
            texts += [_url_path(value) for _, value in (*request_headers, *response_headers)]
        blob = "\n".join(texts).encode("utf-8", "surrogatepass")
        if body is not None:
            blob += b"\n" + orjson.dumps(body)
        return blob

    def _header(self, name: str, value: str) -> str | None:
        """The key-based pass over one header; a value the fast path proved clean (see
        `_redact`: Accept, User-Agent, … repeat across requests) is skipped."""
        if value in self._clean and self.text.plain_headers.get(name):
            return value
        return self.text.header(name, value)

    def _scan_header(self, name: str, value: str) -> str | None:
        """The detector and path-pattern pass over one header value."""
        if value in self._clean and self.text.plain_headers.get(name):
            return value
        return self.text.scan(value)

    def _headers(self, headers: Headers, clean: Cleaner) -> Headers:
        """Headers with each value cleaned by `clean(name, value)`; the same tuple if none
        changed. A None value drops the header."""
        out: list[tuple[str, str]] | None = None
        for index, (name, value) in enumerate(headers):
            new = clean(name, value)
            if self._anonymize and new and name in IP_HEADERS:
                new = self._anonymize_text(new)
            if new is not value and out is None:
                out = list(headers[:index])
            if out is not None and new is not None:
                out.append((name, new))
        return headers if out is None else tuple(out)

    def _body(self, value: Any, depth: int) -> Any:
        """Key-based pass over a captured body: secret keys at any depth get the body action;
        strings are cleaned as text (URLs, ``key=value``, JSON inside a string)."""
        if depth > MAX_BODY_DEPTH:
            return MASK
        if isinstance(value, str):
            return self._body_string(value, depth)
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            changed = False
            for key, item in value.items():
                if isinstance(key, str) and self.text.secret_key(key):
                    new = self._act_on(item)
                    changed = changed or new is not item
                    if new is not _DROPPED:
                        out[key] = new
                else:
                    new = self._body(item, depth + 1)
                    changed = changed or new is not item
                    out[key] = new
            return out if changed else value
        if isinstance(value, list):
            items = [self._body(item, depth + 1) for item in value]
            return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
        return value

    def _body_string(self, value: str, depth: int) -> str:
        stripped = value.strip()
        if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
            try:
                inner = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                inner = None
            if isinstance(inner, dict | list):
                cleaned = self._body(inner, depth + 1)
                return value if cleaned is inner else orjson.dumps(cleaned).decode()
        return self.text.text(value)

    def _act_on(self, item: Any) -> Any:
        """The body action on a secret key's value, whatever its JSON type."""
        if item is None or item == "":
            return item
        if isinstance(item, dict | list):
            text = orjson.dumps(item, option=orjson.OPT_SORT_KEYS).decode()
        else:
            text = item if isinstance(item, str) else str(item)
        new = self._act_body(text)
        return _DROPPED if new is None else new

    def _scan_body(self, value: Any, depth: int) -> Any:
        """Detector pass over a captured body's strings (keys included) and numbers."""
        if depth > MAX_BODY_DEPTH:
            return MASK
        if isinstance(value, str):
            return self.text.scan(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return self._scan_number(value)
        if isinstance(value, dict):
            return {
                (self.text.scan(k) if isinstance(k, str) else k): self._scan_body(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self._scan_body(item, depth + 1) for item in value]
        return value

    def _scan_number(self, value: float) -> Any:
        """A JSON number as a detector sees it (``4111111111111111`` or ``…1111.0`` is a card
        number): the number itself, or the redacted text in its place."""
        integral = isinstance(value, int) or (value.is_integer() and abs(value) < MAX_EXACT_FLOAT)
        text = str(int(value)) if integral else repr(value)
        if len(text) < MIN_SECRET_DIGITS:
            return value
        scanned = self.text.scan(text)
        return value if scanned == text else scanned

    def anonymize_ip(self, ip: str) -> str:
        """An IPv4 address to its /24, an IPv6 address to its /48 (IPv4-mapped as IPv4);
        anything else unchanged. Cached: clients repeat."""
        hit = self._ips.get(ip)
        if hit is None:
            if len(self._ips) >= CACHE_SIZE:
                self._ips.clear()
            hit = self._ips[ip] = _anonymize(ip)
        return hit

    def _anonymize_text(self, value: str) -> str:
        """Every address in a header value such as X-Forwarded-For or Forwarded."""
        return str(self._ip_tokens.sub(lambda m: self._anonymize_token(m.group(0)), value))

    def _anonymize_token(self, token: str) -> str:
        if token.count(":") == 1 and "." in token:  # 192.0.2.7:4711
            host, _, port = token.partition(":")
            return f"{self.anonymize_ip(host)}:{port}"
        return self.anonymize_ip(token)

    def _withheld(self, record: AccessRecord) -> AccessRecord:
        """The record with every request-derived text replaced: what is logged when redaction
        itself failed. Nothing here can raise."""
        request_id = record.request_id
        if len(request_id) != 36 or not set(request_id) <= _UUID_CHARS:
            request_id = MASK
        client_ip, source_ip = record.client_ip, record.source_ip
        if self._anonymize:
            client_ip, source_ip = _safe_anonymize(client_ip), _safe_anonymize(source_ip)
        return record._replace(
            request_id=request_id,
            path=MASK,
            query=None if record.query is None else MASK,
            domain=MASK,
            user_agent=None if record.user_agent is None else MASK,
            request_headers=tuple((name, MASK) for name, _ in record.request_headers),
            response_headers=tuple((name, MASK) for name, _ in record.response_headers),
            error_message=None if record.error_message is None else MASK,
            request_body=None,
            client_ip=client_ip,
            source_ip=source_ip,
            tags=(*record.tags, FAILED_TAG),
        )


class _Dropped:
    """Marks a body value whose key is dropped."""


_DROPPED = _Dropped()


def _url_path(value: str) -> str:
    span = url_path_span(value)
    return "" if span is None else value[span[0] : span[1]]


def _anonymize(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])  # fe80::1%eth0: the scope goes
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv4Address):
        return str(ipaddress.IPv4Network((address, IPV4_PREFIX), strict=False).network_address)
    mapped = address.ipv4_mapped
    if mapped is not None:
        return f"::ffff:{_anonymize(str(mapped))}"
    return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False).network_address)


def _safe_anonymize(ip: str) -> str:
    try:
        return _anonymize(ip)
    except Exception:
        return "0.0.0.0"
