"""Reading captured headers back from records (`proxylog.schema_version` 2): Referer is ECS
`http.request.referrer`, every other captured header is under `proxylog.http`."""

from __future__ import annotations

from typing import Any


def request_headers(doc: dict[str, Any]) -> dict[str, str]:
    """The captured request headers of a nested record, by lower-case name."""
    headers: dict[str, str] = {}
    if (referrer := doc["http"]["request"].get("referrer")) is not None:
        headers["referer"] = referrer
    headers.update(doc["proxylog"].get("http", {}).get("request", {}).get("headers", {}))
    return headers


def response_headers(doc: dict[str, Any]) -> dict[str, str]:
    """The captured response headers of a nested record, by lower-case name."""
    return dict(doc["proxylog"].get("http", {}).get("response", {}).get("headers", {}))
