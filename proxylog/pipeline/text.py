"""Request bytes as log-safe text, the one conversion records and rule facts share."""

from __future__ import annotations

from proxylog.config import RecordSpec
from proxylog.record import cap_text


def text(raw: bytes | str, name: str, spec: RecordSpec, truncated: list[str]) -> str:
    """Request data as log-safe text: invalid UTF-8 as ``\\xNN``, capped, truncation noted
    under `name` in `truncated`."""
    if isinstance(raw, bytes):
        value = raw.decode("utf-8", "backslashreplace")
    elif raw.isascii():
        value = raw
    else:  # a surrogateescape-decoded str (mitmproxy's); surrogates cannot be JSON-encoded
        value = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if len(value) * 4 <= spec.max_field_bytes and value.isprintable():
        return value  # the common case, without a call
    value, cut = cap_text(value, spec.max_field_bytes)
    if cut:
        truncated.append(name)
    return value


def without_port(host: bytes) -> bytes:
    """``example.com:8080`` → ``example.com``; ``[::1]:8080`` → ``::1``."""
    if host.startswith(b"["):
        return host[1 : host.find(b"]")] if b"]" in host else host
    name, sep, port = host.rpartition(b":")
    return name if sep and port.isdigit() else host
