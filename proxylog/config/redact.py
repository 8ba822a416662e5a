"""Redaction spec (``redact:``): what is hidden in every record before any sink sees it.

The built-in lists below are what every deployment gets; the config only adds to them
(``headers``, ``keys``, ``paths``), exempts (``keep_keys``, ``keep_cookies``) or picks
detectors and actions. Patterns are validated with google-re2 here, so a bad one is a
ConfigError naming its key path (``redact.paths[1]: re2 rejected the pattern …``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import re2

from proxylog.config.reader import Fields, Node

Action = Literal["mask", "hash", "partial", "drop"]
ACTIONS: tuple[Action, ...] = get_args(Action)

DETECTOR_NAMES = (
    "jwt",
    "bearer",
    "credit_card",
    "aws_access_key",
    "private_key",
    "known_tokens",
    "email",
)
DEFAULT_DETECTORS = ("jwt", "bearer", "credit_card", "aws_access_key", "private_key", "known_tokens")
# What `actions:` may override: the kinds of place a secret is found, and each detector.
TARGETS = ("headers", "cookies", "query", "body", "paths", "userinfo", *DETECTOR_NAMES)

# Always redacted whole (the auth scheme word is kept), whatever the config says.
CREDENTIAL_HEADERS = (
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "apikey",
    "x-auth-token",
    "x-access-token",
    "x-csrf-token",
    "x-xsrf-token",
    "x-amz-security-token",
    "x-goog-api-key",
)
# A captured header whose lower-case name contains one of these is a credential header too.
CREDENTIAL_HEADER_MARKERS = (
    "auth",
    "token",
    "secret",
    "passw",
    "api-key",
    "api_key",
    "apikey",
    "session",
    "signature",
    "credential",
    "csrf",
    "xsrf",
)
COOKIE_HEADERS = ("cookie", "set-cookie")

# Rails' default `filter_parameters`, matched like Rails: case-insensitive substrings of the key.
RAILS_FILTER_PARAMETERS = (
    "passw",
    "secret",
    "token",
    "_key",
    "crypt",
    "salt",
    "certificate",
    "otp",
    "ssn",
    "cvv",
    "cvc",
    "email",
)
# OpenTelemetry's signed-URL query keys, and a few well-known credential keys: whole keys
# (or one bracketed part of a Rails nested key), case-insensitive.
OTEL_SIGNED_URL_KEYS = (
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "awsaccesskeyid",
    "signature",
    "sig",
    "x-goog-signature",
)
EXTRA_EXACT_KEYS = ("key", "code", "sid", "sessionid", "session_id", "jsessionid", "auth")
# Substrings beyond Rails': the API-key spellings credential headers are matched by, too.
EXTRA_KEYS = ("api-key", "apikey", "passphrase")
DEFAULT_KEYS = RAILS_FILTER_PARAMETERS + EXTRA_KEYS
DEFAULT_EXACT_KEYS = OTEL_SIGNED_URL_KEYS + EXTRA_EXACT_KEYS

# Rails password-reset and similar one-time-token routes; every capture group is redacted.
# Tokens are at least 16 characters so that /passwords/new and numeric ids stay readable.
# Any case, and "_" also as %5F: a router that folds either still reaches the route.
_U = "(?:_|%5F)"
DEFAULT_PATHS = (
    rf"(?i:/password{_U}resets/)([^/?#]+)",
    r"(?i:/passwords/)([^/?#]{16,})",
    rf"(?i:/(?:account{_U}activations|confirmations|invitations|unlocks|magic{_U}links|sign{_U}in{_U}links)/)"
    r"([^/?#]{16,})",
)

HASH_KEY_MIN_BYTES = 16
BODY_MAX_BYTES_LIMIT = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BodySpec:
    """Opt-in capture of form and JSON request bodies, bounded in size, depth and items."""

    capture: bool = False
    max_bytes: int = 8192
    max_depth: int = 16
    max_items: int = 1000


@dataclass(frozen=True, slots=True)
class RedactSpec:
    """What to redact in every record before it reaches any sink.

    `keys` are case-insensitive substrings of a parameter key (query, form, JSON at any
    depth), or ``/re2 pattern/``; `exact_keys` match a whole key. `paths` are re2 patterns
    whose capture groups (or whole match) are redacted. `hash_key` never appears in a repr.
    """

    action: Action = "mask"
    actions: tuple[tuple[str, Action], ...] = ()
    headers: tuple[str, ...] = CREDENTIAL_HEADERS
    keep_cookies: tuple[str, ...] = ()
    keys: tuple[str, ...] = DEFAULT_KEYS
    exact_keys: tuple[str, ...] = DEFAULT_EXACT_KEYS
    keep_keys: tuple[str, ...] = ()
    paths: tuple[str, ...] = DEFAULT_PATHS
    detectors: tuple[str, ...] = DEFAULT_DETECTORS
    anonymize_ip: bool = False
    body: BodySpec = field(default_factory=BodySpec)
    hash_key: bytes = field(default=b"", repr=False)

    def action_for(self, target: str) -> Action:
        """The action for a target or detector: its override, else the default `action`."""
        for name, action in self.actions:
            if name == target:
                return action
        return self.action


_KEYS = frozenset(
    {
        "action",
        "actions",
        "headers",
        "keep_cookies",
        "keys",
        "keep_keys",
        "paths",
        "detectors",
        "anonymize_ip",
        "body",
        "hash_key_file",
        "hash_key_env",
    }
)


def re2_options() -> re2.Options:
    """Options for every proxylog pattern: errors are raised, not also printed by RE2."""
    options = re2.Options()
    options.log_errors = False
    return options


def compile_pattern(node: Node, pattern: str) -> re2._Regexp:
    """Compile a user pattern with re2; a rejection is a ConfigError at the node's path."""
    try:
        return re2.compile(pattern, re2_options())
    except re2.error as e:
        reason = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else e
        node.fail(f"re2 rejected the pattern {pattern!r}: {reason}")


def parse_redact(node: Node) -> RedactSpec:
    """Validate ``redact:`` into a RedactSpec; raises ConfigError naming the key path."""
    fields = node.fields(_KEYS)
    defaults = RedactSpec()
    action = fields.get("action")
    actions = fields.get("actions")
    headers = fields.get("headers")
    keys = fields.get("keys")
    paths = fields.get("paths")
    detectors = fields.get("detectors")
    anonymize = fields.get("anonymize_ip")
    body = fields.get("body")
    spec = RedactSpec(
        action=action.choice(ACTIONS) if action else defaults.action,
        actions=_parse_actions(actions) if actions else (),
        headers=_dedupe(defaults.headers + headers.header_names()) if headers else defaults.headers,
        keep_cookies=_names(fields.get("keep_cookies"), lower=False),
        keys=_dedupe(defaults.keys + _keys(keys)) if keys else defaults.keys,
        keep_keys=_names(fields.get("keep_keys"), lower=True),
        paths=_dedupe(defaults.paths + _patterns(paths)) if paths else defaults.paths,
        detectors=_detectors(detectors) if detectors else defaults.detectors,
        anonymize_ip=anonymize.boolean() if anonymize else defaults.anonymize_ip,
        body=_parse_body(body) if body else defaults.body,
    )
    key = _hash_key(fields.get("hash_key_file"), fields.get("hash_key_env"))
    if not key and (needs := _needs_key(spec, fields)) is not None:
        needs.fail("the hash action needs a key: set redact.hash_key_file or redact.hash_key_env")
    return replace(spec, hash_key=key)


def _needs_key(spec: RedactSpec, fields: Fields) -> Node | None:
    """The node whose value asks for the hash action, or None when nothing does."""
    for target, action in spec.actions:
        if action == "hash":
            return fields.require("actions").fields(frozenset(TARGETS)).require(target)
    return fields.require("action") if spec.action == "hash" else None


def _dedupe(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _parse_actions(node: Node) -> tuple[tuple[str, Action], ...]:
    fields = node.fields(frozenset(TARGETS))
    result = []
    for target in TARGETS:
        child = fields.get(target)
        if child is not None:
            result.append((target, child.choice(ACTIONS)))
    return tuple(result)


def _names(node: Node | None, *, lower: bool) -> tuple[str, ...]:
    if node is None:
        return ()
    names = (item.string().strip() for item in node.items())
    return _dedupe(tuple(n.lower() if lower else n for n in names))


def _keys(node: Node) -> tuple[str, ...]:
    keys = []
    for item in node.items():
        key = item.string().strip()
        if len(key) > 2 and key.startswith("/") and key.endswith("/"):
            compile_pattern(item, key[1:-1])
            keys.append(key)
        else:
            keys.append(key.lower())
    return tuple(keys)


def _patterns(node: Node) -> tuple[str, ...]:
    patterns = []
    for item in node.items():
        pattern = item.string()
        compile_pattern(item, pattern)
        patterns.append(pattern)
    # The Redactor searches them all at once: that must compile too (re2 bounds its memory).
    combined = "|".join(f"(?m:{p})" for p in (*DEFAULT_PATHS, *patterns))
    try:
        re2.compile(combined, re2_options())
    except re2.error:
        node.fail(f"re2 cannot search these {len(patterns)} patterns together: use fewer or simpler ones")
    return tuple(patterns)


def _detectors(node: Node) -> tuple[str, ...]:
    if node.value == []:
        return ()
    return _dedupe(tuple(item.choice(DETECTOR_NAMES) for item in node.items()))


def _parse_body(node: Node) -> BodySpec:
    fields = node.fields({"capture", "max_bytes", "max_depth", "max_items"})
    defaults = BodySpec()
    capture = fields.get("capture")
    max_bytes = fields.get("max_bytes")
    max_depth = fields.get("max_depth")
    max_items = fields.get("max_items")
    size = max_bytes.size(min=1) if max_bytes else defaults.max_bytes
    if max_bytes and size > BODY_MAX_BYTES_LIMIT:
        max_bytes.fail(f"must be at most 1m, got {max_bytes.value!r}")
    return BodySpec(
        capture=capture.boolean() if capture else defaults.capture,
        max_bytes=size,
        max_depth=max_depth.integer(min=1, max=64) if max_depth else defaults.max_depth,
        max_items=max_items.integer(min=1, max=100_000) if max_items else defaults.max_items,
    )


def _hash_key(from_file: Node | None, from_env: Node | None) -> bytes:
    """The HMAC key, read now so that `proxylog check` catches a missing or short key."""
    if from_file and from_env:
        from_env.fail("set only one of redact.hash_key_file and redact.hash_key_env")
    if from_file:
        path = os.path.expanduser(from_file.string())
        try:
            key = Path(path).read_bytes().strip()
        except OSError as e:
            from_file.fail(f"cannot read {path}: {e.strerror or e}")
        where = from_file
    elif from_env:
        name = from_env.string().strip()
        key = os.environ.get(name, "").strip().encode("utf-8")
        if not key:
            from_env.fail(f"environment variable {name} is not set or empty")
        where = from_env
    else:
        return b""
    if len(key) < HASH_KEY_MIN_BYTES:
        where.fail(f"the hash key must be at least {HASH_KEY_MIN_BYTES} bytes, got {len(key)}")
    return key
