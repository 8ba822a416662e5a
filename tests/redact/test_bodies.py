"""Opt-in body capture: form and JSON parsing, size/depth/item caps, never raising."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxylog.config import parse_config
from proxylog.config.redact import RedactSpec
from proxylog.record import encode_record
from proxylog.redact import Redactor
from proxylog.redact.bodies import CUT, build_body_parser
from proxylog.testing import make_record


def parser(**body: object):  # type: ignore[no-untyped-def]
    built = build_body_parser(parse_config({"redact": {"body": {"capture": True, **body}}}).redact)
    assert built is not None
    return built


def test_capture_is_off_by_default() -> None:
    """Without redact.body.capture there is no parser, so no body ever reaches a record."""
    assert build_body_parser(RedactSpec()) is None


@pytest.mark.parametrize(
    ("content_type", "raw", "expected"),
    [
        (
            "application/json",
            b'{"user": {"password": "x"}, "n": [1, 2.5, true, null]}',
            {"user": {"password": "x"}, "n": [1, 2.5, True, None]},
        ),
        ("application/vnd.api+json; charset=utf-8", b'["a"]', ["a"]),
        ("Application/JSON", b'"just a string"', "just a string"),
        (
            "application/x-www-form-urlencoded",
            b"user%5Bemail%5D=a%40b.c&pw=x+y&tag=1&tag=2;extra=1",
            {"user[email]": "a@b.c", "pw": "x y", "tag": ["1", "2"], "extra": "1"},
        ),
        ("application/x-www-form-urlencoded; charset=utf-8", b"flag&k=", {"flag": "", "k": ""}),
    ],
)
def test_form_and_json_bodies_are_parsed(content_type: str, raw: bytes, expected: object) -> None:
    """JSON (and +json types) and urlencoded forms become structures; repeated keys a list."""
    assert parser()(content_type, raw) == expected


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("text/plain", b"password=x"),
        ("multipart/form-data; boundary=x", b"--x\r\n"),
        (None, b'{"a": 1}'),
        ("application/json", b'{"a": '),
        ("application/json", b"\x1f\x8b\x08\x00compressed"),
        ("application/json", b'{"a": "' + b"x" * 9000 + b'"}'),
    ],
)
def test_other_or_unusable_bodies_are_not_captured(content_type: str | None, raw: bytes) -> None:
    """Other content types, malformed, compressed or oversized bodies give None."""
    assert parser()(content_type, raw) is None


def test_depth_and_item_caps_cut_the_structure() -> None:
    """Nesting beyond max_depth and items beyond max_items are replaced by a marker."""
    deep = parser(max_depth=2)("application/json", b'{"a": {"b": {"c": {"d": 1}}}}')
    assert deep == {"a": {"b": CUT}}
    many = parser(max_items=3)("application/json", b"[1, 2, 3, 4, 5]")
    assert many == [1, 2, CUT]
    form = parser(max_items=2)("application/x-www-form-urlencoded", b"a=1&b=2&c=3")
    assert form == {"a": "1", "b": "2", CUT: CUT}


def test_strings_are_log_safe_and_numbers_encodable() -> None:
    """Control and bidi characters are escaped as text; integers orjson cannot write become strings."""
    body = parser()("application/json", b'{"k\\u202e": "a\\nb\\u0000", "big": 123456789012345678901234}')
    assert body == {"k\\u202e": "a\\u000ab\\u0000", "big": 1.2345678901234568e23}
    huge = parser()("application/json", b"[18446744073709551616]")
    encode_record(make_record(request_body=huge))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    content_type=st.sampled_from(["application/json", "application/x-www-form-urlencoded"]),
    raw=st.binary(max_size=512)
    | st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=30,
    ).map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)),
)
def test_hostile_bytes_never_raise_and_always_encode(content_type: str, raw: bytes) -> None:
    """Any bytes give a structure (or None) that redacts and encodes without an error."""
    body = parser()(content_type, raw)
    record = Redactor(RedactSpec())(make_record(request_body=body))
    assert "redaction_failed" not in record.tags
    encode_record(record)
