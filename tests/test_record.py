"""The record: log-safe text, ECS shape, flat schema, encoding."""

from __future__ import annotations

import orjson
import pytest

from proxylog.record import RuleHit, cap_text, encode_record, format_timestamp, to_ecs
from proxylog.testing import make_record


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("tab\there", "tab\\u0009here"),
        ("esc\x1b[31m", "esc\\u001b[31m"),
        ("del\x7f", "del\\u007f"),
        ("c1\x85", "c1\\u0085"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("line\u2028sep", "line\\u2028sep"),
        ("ünïcödé ok", "ünïcödé ok"),
    ],
)
def test_cap_text_escapes_non_printable_characters(value: str, expected: str) -> None:
    """Anything non-printable becomes visible \\uXXXX text; printable Unicode is kept."""
    assert cap_text(value, 4096) == (expected, False)


def test_cap_text_cuts_on_utf8_bytes_without_splitting_characters() -> None:
    """Capping counts UTF-8 bytes and never leaves half a character."""
    text, cut = cap_text("é" * 100, 51)
    assert cut and text == "é" * 25
    assert cap_text("a" * 64, 64) == ("a" * 64, False)


def test_ecs_document_shape() -> None:
    """The nested document carries the ECS fields and proxylog's own."""
    record = make_record(
        timestamp=1_700_000_000.5,
        query="a=1",
        status=404,
        rules=(RuleHit("probe", 11, 10, 60.0),),
        tags=("probe",),
        error_type=None,
        upstream_ms=1.5,
        request_headers=(("referer", "x"),),
    )
    doc = to_ecs(record)
    assert doc["@timestamp"] == "2023-11-14T22:13:20.500000Z"
    assert doc["url"]["query"] == "a=1"
    assert doc["http"]["response"]["status_code"] == 404
    assert doc["http"]["request"]["referrer"] == "x"
    assert doc["event"]["outcome"] == "failure"
    assert doc["proxylog"]["rules"] == [{"id": "probe", "count": 11, "threshold": 10, "window_s": 60.0}]
    assert doc["proxylog"]["upstream"] == {"duration_ms": 1.5}


def test_no_response_means_no_response_object() -> None:
    """A request that got no response has no http.response and an error."""
    doc = to_ecs(make_record(status=None, error_type="client_disconnect", error_message="gone"))
    assert "response" not in doc["http"]
    assert doc["error"] == {"type": "client_disconnect", "message": "gone"}
    assert doc["event"]["outcome"] == "failure"


def test_flat_schema_uses_dotted_keys() -> None:
    """schema: flat turns nesting into dotted keys."""
    doc = orjson.loads(encode_record(make_record(request_headers=(("referer", "r"),)), "flat"))
    assert doc["url.path"] == "/"
    assert doc["http.request.referrer"] == "r"
    assert doc["client.ip"] == "203.0.113.7"
    assert not any(isinstance(v, dict) for v in doc.values())


def test_encoding_is_one_line_without_raw_control_bytes() -> None:
    """orjson escapes control characters, so a record is exactly one line."""
    line = encode_record(make_record(path="/a\nb\r\x00"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert all(byte >= 0x20 for byte in line[:-1])


def test_timestamp_format_handles_microseconds() -> None:
    """Timestamps are RFC 3339 UTC with six fractional digits."""
    assert format_timestamp(0.000001) == "1970-01-01T00:00:00.000001Z"
    assert format_timestamp(1_700_000_000.999999).startswith("2023-11-14T22:13:20.99999")
