"""Parameter keys and actions: which keys are secret, what a secret becomes, and the
one-search prefilter that proves a text needs no redaction. Used by TextRedactor."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from urllib.parse import unquote_plus

import re2

from proxylog.config.redact import RedactSpec, re2_options
from proxylog.errors import ConfigError
from proxylog.record import cap_text

MASK = "[REDACTED]"
PARTIAL_MIN_CHARS = 12  # shorter values are masked: four characters would be a third of them
HASH_HEX_CHARS = 16
CACHE_SIZE = 4096
DECODE_ROUNDS = 3

Act = Callable[[str], str | None]


def _mask(value: str) -> str | None:
    return MASK


def _drop(value: str) -> str | None:
    return None


def _partial(value: str) -> str | None:
    if len(value) < PARTIAL_MIN_CHARS:
        return MASK
    tail, _ = cap_text(value[-4:], 64)
    return "****" + tail


def _hash(key: bytes, value: str) -> str | None:
    digest = hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"[hash:{digest[:HASH_HEX_CHARS]}]"


ACTIONS: dict[str, Callable[[bytes], Act]] = {
    "mask": lambda key: _mask,
    "hash": lambda key: functools.partial(_hash, key),
    "partial": lambda key: _partial,
    "drop": lambda key: _drop,
}


def action_for(spec: RedactSpec, target: str) -> Act:
    """The compiled action for a target or detector (its override, else the default)."""
    return ACTIONS[spec.action_for(target)](spec.hash_key)


def url_decoded(value: str) -> str:
    """A URL-encoded value as the application reads it (``+`` is a space)."""
    return unquote_plus(value, errors="replace") if "%" in value or "+" in value else value


def fully_decoded(value: str) -> str:
    """`value` URL-decoded until it stops changing, at most DECODE_ROUNDS times: what an app
    that decodes a parameter once more than it should reads (``%2570`` is ``%70`` is ``p``)."""
    for _ in range(DECODE_ROUNDS):
        decoded = url_decoded(value)
        if decoded == value:
            break
        value = decoded
    return value


class KeyMatcher:
    """Is a parameter key secret? Rails-style substrings, whole keys, ``/re2/`` patterns and
    exemptions, after percent-decoding; answers are cached (keys repeat across requests)."""

    def __init__(self, spec: RedactSpec) -> None:
        self._substrings = tuple(k for k in spec.keys if not is_regex(k))
        self._exact = frozenset(spec.exact_keys)
        self._keep = frozenset(spec.keep_keys)
        patterns = [k[1:-1] for k in spec.keys if is_regex(k)]
        options = re2_options()
        options.case_sensitive = False
        self._regex = re2.compile("|".join(f"(?:{p})" for p in patterns), options) if patterns else None
        self.cache: dict[str, bool] = {}

    def __call__(self, key: str) -> bool:
        hit = self.cache.get(key)
        if hit is None:
            if len(self.cache) >= CACHE_SIZE:
                self.cache.clear()
            hit = self.cache[key] = self._classify(key)
        return hit

    def _classify(self, key: str) -> bool:
        key = fully_decoded(key)
        lower = key.strip().lower()
        parts = [p.strip() for p in lower.replace("]", "[").split("[") if p.strip()]
        if lower in self._keep or (parts and parts[-1] in self._keep):
            return False
        if any(s in lower for s in self._substrings):
            return True
        if lower in self._exact or any(p in self._exact for p in parts):
            return True
        return self._regex is not None and self._regex.search(key) is not None


def is_regex(key: str) -> bool:
    return len(key) > 2 and key.startswith("/") and key.endswith("/")


def key_hints(spec: RedactSpec) -> list[str]:
    """Patterns matching wherever KeyMatcher could call a key secret, or URL handling could
    change anything: a superset (false alarms only cost the full pass), kept honest by a
    property test against the full pass."""
    hints = [
        r"%[0-9A-Fa-f]{2}[^&;=]*=",  # a percent-encoded key decodes to anything
        r"%(?:25){0,2}(?:3[DdAa]|2[Ff])",  # an encoded URL or query in a value, maybe twice over
        r"://[^/ \t]*@",  # URL userinfo
        r"(?m:^|=)//[^/ \t]*@",  # userinfo of a scheme-less URL (a header, a path, a value)
    ]
    substrings = [k for k in spec.keys if not is_regex(k)]
    if substrings:
        hints.append("(?i:" + "|".join(re2.escape(k) for k in substrings) + ")")
    if spec.exact_keys:
        hints.append("(?i:(?:" + "|".join(re2.escape(k) for k in spec.exact_keys) + ")[^&;=]*=)")
    if any(is_regex(k) for k in spec.keys):
        hints.append("=")  # a user pattern may match any key
    return hints


def searcher(patterns: list[str]) -> Callable[[bytes], bool]:
    """Whether any of `patterns` matches in bytes, as one re2 search. The wrapper's `search`
    converts offsets through a generator (about 1 µs a call here); RE2's own Match on bytes
    skips that, when the wrapper exposes it."""
    if not patterns:
        return lambda blob: False
    options = re2_options()
    options.never_capture = True
    try:
        compiled = re2.compile("|".join(f"(?:{p})" for p in patterns), options)
    except re2.error as e:  # parse_redact checks the paths together; this is the backstop
        raise ConfigError("redact.paths", "re2 cannot search these patterns together") from e
    regexp = getattr(compiled, "_regexp", None)
    anchor = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
    if regexp is None or anchor is None or not hasattr(regexp, "Match"):
        return lambda blob: compiled.search(blob) is not None
    null = (-1, -1)

    def search(blob: bytes) -> bool:
        return bool(regexp.Match(anchor, blob, 0, len(blob))[0] != null)

    return search
