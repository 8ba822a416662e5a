"""Redaction of one piece of text: query strings, URLs, cookies, credential headers, path
patterns, value detectors, free text (keys and actions are in _redact_keys). The Redactor
applies these to a record.

Convention: a method returns the very object it was given when nothing changed (callers
test with ``is``), and None when the action is ``drop`` and the whole thing goes.
Every pattern that runs on request data is google-re2 (linear time); the rest is plain
string splitting, so the common case costs no regex at all.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import re2

from proxylog.config.redact import (
    COOKIE_HEADERS,
    CREDENTIAL_HEADER_MARKERS,
    RedactSpec,
    re2_options,
)
from proxylog.redact.detectors import DETECTORS, Detector
from proxylog.redact.keys import (
    CACHE_SIZE,
    KeyMatcher,
    action_for,
    fully_decoded,
    key_hints,
    searcher,
    url_decoded,
)

NESTED_DEPTH = 2  # a URL inside a parameter inside a URL; deeper, a suspect value goes whole

AUTH_SCHEMES = frozenset(
    {
        "basic",
        "bearer",
        "digest",
        "negotiate",
        "ntlm",
        "token",
        "apikey",
        "hoba",
        "mutual",
        "dpop",
        "gnap",
        "vapid",
        "privatetoken",
        "scram-sha-1",
        "scram-sha-256",
        "aws4-hmac-sha256",
    }
)
SET_COOKIE_ATTRIBUTES = frozenset({"path", "domain", "expires", "max-age", "samesite", "priority"})
SET_COOKIE_FLAGS = frozenset({"secure", "httponly", "partitioned"})
_DATE_CHARS = frozenset("0123456789 :-ADFGJMNOSTWabceghilnoprtuvy")


def url_path_span(text: str) -> tuple[int, int] | None:
    """Where the path of a URL-like text is (absolute URL or one starting with ``/``)."""
    scheme_end = text.find("://")
    if scheme_end >= 0:
        start = text.find("/", scheme_end + 3)
        if start < 0:
            return None
    elif text.startswith("/"):
        start = 0
    else:
        return None
    end = len(text)
    for stop in "?#":
        found = text.find(stop, start)
        if 0 <= found < end:
            end = found
    return start, end


class TextRedactor:
    """Compiled once per config from a RedactSpec; every method is cheap when nothing in its
    text needs redacting."""

    def __init__(self, spec: RedactSpec) -> None:
        self.act_headers = action_for(spec, "headers")
        self.act_cookies = action_for(spec, "cookies")
        self.act_query = action_for(spec, "query")
        self.act_paths = action_for(spec, "paths")
        self.act_userinfo = action_for(spec, "userinfo")
        self.secret_key = KeyMatcher(spec)
        self._credential_headers = frozenset(spec.headers)
        self._keep_cookies = frozenset(spec.keep_cookies)
        self._header_handlers: dict[str, Callable[[str], str | None]] = {}
        self.plain_headers: dict[str, bool] = {}
        options = re2_options()
        self._paths = [re2.compile(p, options) for p in spec.paths]
        detectors = [DETECTORS[name] for name in spec.detectors]
        patterns = [_named(d) for d in detectors]
        self._detect = re2.compile("|".join(patterns), options) if detectors else None
        groups: dict[str, int] = self._detect.groupindex if self._detect is not None else {}
        self._detectors = [
            (
                groups[f"d_{d.name}"],
                groups.get(f"s_{d.name}", groups[f"d_{d.name}"]),
                d,
                action_for(spec, d.name),
            )
            for d in detectors
        ]
        self.paths_always = any("\\A" in p or "\\z" in p for p in spec.paths)
        self.paths_anchored = any(_anchored(p) for p in spec.paths)
        scan = [*patterns, *(f"(?m:{p})" for p in spec.paths if "\\A" not in p and "\\z" not in p)]
        self._needs_scan = searcher(scan)
        self._needs_any = searcher([*scan, *key_hints(spec)])
        names = "|".join(re2.escape(h) for h in sorted({*spec.headers, *COOKIE_HEADERS}))
        markers = "|".join(re2.escape(m) for m in (*CREDENTIAL_HEADER_MARKERS, "cookie"))
        self._header_line = re2.compile(
            rf"(?i)\b((?:{names})|[A-Za-z0-9_\-]*(?:{markers})[A-Za-z0-9_\-]*)[ \t]*:[ \t]*([^\r\n'\"\\]*)",
            options,
        )
        self._userinfo_free = re2.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#@\s'\"]*)@", options)
        self._pair_free = re2.compile(r"([^\s=&;?#'\"<>,]+)=([^\s&;#'\"<>,]*)", options)

    def may_need_scan(self, blob: bytes) -> bool:
        """False when one re2 search proves that no detector or path pattern matches any of
        the newline-joined texts in `blob`."""
        return self.paths_always or self._needs_scan(blob)

    def may_need_any(self, blob: bytes) -> bool:
        """False when one re2 search proves that nothing in the newline-joined texts in `blob`
        would change: no detector or path pattern match, no secret parameter key (plain,
        percent-encoded or nested), no URL userinfo. Header names are the caller's check."""
        return self.paths_always or self._needs_any(blob)

    def header(self, name: str, value: str) -> str | None:
        """A captured header's value as it may be logged (None: dropped)."""
        handler = self._header_handlers.get(name)
        if handler is None:
            if len(self._header_handlers) >= CACHE_SIZE:
                self._header_handlers.clear()
            handler = self._header_handlers[name] = self._handler_for(name)
        return handler(value) if value else value

    def plain_header(self, name: str) -> bool:
        """True when a header is redacted by its value alone (not by its name): then the
        prefilter over its value decides. Cached in `plain_headers`."""
        plain = self.plain_headers.get(name)
        if plain is None:
            if len(self.plain_headers) >= CACHE_SIZE:
                self.plain_headers.clear()
            plain = self.plain_headers[name] = self._handler_for(name) == self.text
        return plain

    def _handler_for(self, name: str) -> Callable[[str], str | None]:
        if name == "set-cookie":
            return self.set_cookie
        if name == "cookie":
            return self.cookie
        if name in self._credential_headers or any(m in name for m in CREDENTIAL_HEADER_MARKERS):
            return self.credential
        if "cookie" in name:
            return self.cookie
        return self.text

    def credential(self, value: str) -> str | None:
        """A credential header: all of it goes, except a recognised auth scheme word."""
        scheme, space, rest = value.partition(" ")
        if space and scheme.lower() in AUTH_SCHEMES and rest.strip():
            secret = self.act_headers(rest.strip())
            return None if secret is None else f"{scheme} {secret}"
        return self.act_headers(value)

    def cookie(self, value: str) -> str | None:
        """A Cookie header: names stay, values go unless the name is in `keep_cookies`."""
        return self._cookies(value, set_cookie=False)

    def set_cookie(self, value: str) -> str | None:
        """Set-Cookie (several joined by ", "): cookie values go, attributes stay."""
        return self._cookies(value, set_cookie=True)

    def _cookies(self, value: str, *, set_cookie: bool) -> str | None:
        segments = value.split(";")
        changed = False
        for si, segment in enumerate(segments):
            parts = segment.split(",")
            kept: list[str] = []
            for pi, part in enumerate(parts):
                new = self._cookie_part(part, set_cookie and pi == 0 and si > 0, set_cookie)
                changed = changed or new is not part
                if new is not None:
                    kept.append(new)
            segments[si] = ",".join(kept)
        if not changed:
            return value
        result = ";".join(s for s in segments if s.strip())
        return result if result.strip() else None

    def _cookie_part(self, part: str, attribute: bool, set_cookie: bool) -> str | None:
        stripped = part.strip()
        if not stripped:
            return part
        lead = part[: len(part) - len(part.lstrip())]
        name, eq, val = stripped.partition("=")
        if not eq:
            lowered = stripped.lower()
            if set_cookie and (lowered in SET_COOKIE_FLAGS or _is_date_fragment(stripped)):
                return part
            new = self.act_cookies(stripped)
            return None if new is None else lead + new
        if attribute and name.strip().lower() in SET_COOKIE_ATTRIBUTES:
            return part
        if not val.strip() or name.strip() in self._keep_cookies:
            return part
        new = self.act_cookies(val)
        return None if new is None else f"{lead}{name}={new}"

    def text(self, value: str, depth: int = 0) -> str:
        """Any other text (a header value, a body string): URLs and ``key=value`` pairs."""
        if "://" in value or "?" in value or "#" in value or value.startswith("//"):
            return self.url(value, depth)
        if "=" in value:
            return self.pairs(value, depth)
        return value

    def url(self, value: str, depth: int = 0) -> str:
        """A URL: userinfo, and parameters in the path, query and ``#fragment``."""
        base, hsh, fragment = value.partition("#")
        head, q, query = base.partition("?")
        new_head = self.userinfo(head) if "@" in head else head
        if "=" in new_head:  # path parameters (;jsessionid=…), or text that is not a URL
            new_head = self.pairs(new_head, depth)
        new_query = self.pairs(query, depth) if q and "=" in query else query
        new_fragment = self.pairs(fragment, depth) if hsh and "=" in fragment else fragment
        if new_head is head and new_query is query and new_fragment is fragment:
            return value
        return new_head + q + new_query + hsh + new_fragment

    def userinfo(self, text: str) -> str:
        """``scheme://user:pass@host`` → ``scheme://[REDACTED]@host`` for each URL in `text`,
        and a leading scheme-less ``//user:pass@host``."""
        authority = 2 if text.startswith("//") else _authority(text, 0)
        while authority >= 0:
            end = len(text)
            for stop in "/ \t":
                found = text.find(stop, authority)
                if 0 <= found < end:
                    end = found
            at = text.rfind("@", authority, end)
            if at >= 0:
                new = self.act_userinfo(text[authority:at])
                text = text[:authority] + ("" if new is None else new + "@") + text[at + 1 :]
            authority = _authority(text, authority)
        return text

    def pairs(self, text: str, depth: int = 0) -> str:
        """``a=1&token=x;b=2`` with the values of secret keys redacted (any case, encoded or
        repeated keys). ``;`` separates too: Rack 2 split on it, so an app may read it; so
        does ``#``: a client may send a fragment in the request line, and it lands here."""
        if "#" in text:
            head, _, fragment = text.partition("#")
            new_head, new_fragment = self.pairs(head, depth), self.pairs(fragment, depth)
            if new_head is head and new_fragment is fragment:
                return text
            return f"{new_head}#{new_fragment}"
        groups = text.split("&")
        changed = False
        known = self.secret_key.cache
        for gi, group in enumerate(groups):
            parts = group.split(";")
            group_changed = False
            for pi, pair in enumerate(parts):
                key, _, value = pair.partition("=")
                if not value:
                    continue
                secret = known.get(key)
                if secret is None:
                    secret = self.secret_key(key)
                if secret:
                    new = self.act_query(url_decoded(value))
                    parts[pi] = "" if new is None else f"{key}={quote(new, safe='[]:*')}"
                    group_changed = True
                elif "=" in value or "%" in value or "://" in value or value.startswith("//"):
                    nested = self._nested(value, depth + 1)
                    if nested is not value:
                        parts[pi] = "" if nested is None else f"{key}={nested}"
                        group_changed = True
            if group_changed:
                groups[gi] = ";".join(p for p in parts if p)
                changed = True
        if not changed:
            return text
        return "&".join(g for g in groups if g)

    def _nested(self, value: str, depth: int) -> str | None:
        """A parameter value holding a URL, a path or a query string, plain or encoded (up to
        three times, as keys are). Past NESTED_DEPTH, a value that may hold a secret is acted on
        whole (None: dropped), so nesting deeper cannot hide one."""
        decoded = fully_decoded(value)
        if not ("=" in decoded or "/" in decoded):
            return value
        if depth > NESTED_DEPTH:
            if not self._needs_any(value.encode("utf-8", "surrogatepass")):
                return value
            new = self.act_query(decoded)
            return None if new is None else quote(new, safe="[]:*")
        cleaned = self.text(decoded, depth)
        if self._needs_scan(cleaned.encode("utf-8", "surrogatepass")):
            cleaned = self.scan(cleaned)
        if cleaned == decoded:
            return value
        return cleaned if decoded is value else quote(cleaned, safe="/:@[]*")

    def domain(self, domain: str) -> str:
        """A Host value never carries userinfo into the record."""
        return domain.rpartition("@")[2] if "@" in domain else domain

    def scan(self, text: str) -> str:
        """Path patterns (on the path of a URL-like text, else on all of it) and detectors."""
        span = url_path_span(text)
        if span is not None and span != (0, len(text)):
            start, end = span
            path = self._apply_paths(text[start:end])
            if path is not text[start:end]:
                text = text[:start] + path + text[end:]
        else:
            text = self._apply_paths(text)
        if self._detect is not None:
            text = self._detect.sub(self._on_detection, text)
        return text

    def free(self, text: str) -> str:
        """Free text such as an error message: credential header lines, URL userinfo, secret
        ``key=value`` pairs, then path patterns and detectors."""
        text = self._header_line.sub(self._on_header_line, text)
        text = self._userinfo_free.sub(self._on_userinfo, text)
        text = self._pair_free.sub(self._on_pair, text)
        return self.scan(text)

    def _apply_paths(self, text: str) -> str:
        for pattern in self._paths:
            if pattern.search(text) is not None:
                text = pattern.sub(self._on_path, text)
        return text

    def _on_path(self, match: re2._Match) -> str:
        whole: str = match.group(0)
        base = match.start()
        if not match.re.groups:
            return self.act_paths(whole) or ""
        out, pos = [], 0
        for group in range(1, match.re.groups + 1):
            start, end = match.span(group)
            if start < 0 or start - base < pos:
                continue
            out.append(whole[pos : start - base])
            out.append(self.act_paths(whole[start - base : end - base]) or "")
            pos = end - base
        out.append(whole[pos:])
        return "".join(out)

    def _on_detection(self, match: re2._Match) -> str:
        whole: str = match.group(0)
        base = match.start()
        found = next((entry for entry in self._detectors if match.start(entry[0]) >= 0), None)
        if found is None:
            return str(whole)
        _, secret_group, detector, act = found
        start, end = match.span(secret_group)
        secret = whole[start - base : end - base]
        if detector.refine is not None:
            refined = detector.refine(secret)
            if refined is None:
                return whole
            start, end = start + refined[0], start + refined[1]
            secret = whole[start - base : end - base]
        normal = detector.normalize(secret) if detector.normalize else secret
        return whole[: start - base] + (act(normal) or "") + whole[end - base :]

    def _on_header_line(self, match: re2._Match) -> str:
        whole: str = match.group(0)
        value: str = match.group(2)
        if not value.strip():
            return whole
        name_part = whole[: len(whole) - len(value)]
        return name_part + (self.act_headers(value) or "")

    def _on_userinfo(self, match: re2._Match) -> str:
        new = self.act_userinfo(match.group(2))
        return str(match.group(1)) + ("" if new is None else new + "@")

    def _on_pair(self, match: re2._Match) -> str:
        key, value = match.group(1), match.group(2)
        if not value or not self.secret_key(key):
            return str(match.group(0))
        new = self.act_query(url_decoded(value))
        return f"{key}={'' if new is None else new}"


def _authority(text: str, start: int) -> int:
    """Where the authority of the next ``scheme://`` URL in `text` from `start` begins, or -1."""
    found = text.find("://", start)
    return found + 3 if found >= 0 else -1


def _named(detector: Detector) -> str:
    """A detector's pattern as one alternative of the combined one: its whole match is group
    ``d_<name>`` and its secret part ``s_<name>``."""
    pattern = detector.pattern.replace("(?P<secret>", f"(?P<s_{detector.name}>")
    return f"(?P<d_{detector.name}>{pattern})"


def _is_date_fragment(text: str) -> bool:
    """``21 Oct 2015 07:28:00 GMT``: the part of an Expires date after its comma."""
    return text.endswith("GMT") and all(c in _DATE_CHARS for c in text)


def _anchored(pattern: str) -> bool:
    """Whether a path pattern uses ``^`` or ``$`` outside a ``[^…]`` class."""
    return "$" in pattern or "^" in pattern.replace("[^", "[")
