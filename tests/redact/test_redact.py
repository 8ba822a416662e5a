"""The Redactor on records built with make_record: each target, action and detector."""

from __future__ import annotations

import base64
import logging

import pytest

from proxylog.config import parse_config
from proxylog.config.redact import RedactSpec
from proxylog.record import encode_record
from proxylog.redact import FAILED_TAG, Redactor
from proxylog.testing import make_record

KEY = "k" * 32
DEFAULT = Redactor(RedactSpec())


def redactor(**redact: object) -> Redactor:
    return Redactor(parse_config({"redact": redact}).redact)


def headers(*pairs: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(pairs)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("page=2&sort=name", "page=2&sort=name"),
        ("password=hunter2&page=2", "password=[REDACTED]&page=2"),
        ("PassWord=hunter2", "PassWord=[REDACTED]"),
        ("%70assword=hunter2", "%70assword=[REDACTED]"),
        ("%2570assword=hunter2", "%2570assword=[REDACTED]"),
        ("user%5Bpassword%5D=x&user[email]=a%40b.c", "user%5Bpassword%5D=[REDACTED]&user[email]=[REDACTED]"),
        ("token=a&token=b&token=c", "token=[REDACTED]&token=[REDACTED]&token=[REDACTED]"),
        ("a=1;api_key=zzz", "a=1;api_key=[REDACTED]"),
        (
            "X-Amz-Signature=abc&X-Amz-Credential=AK%2F2024&X-Amz-Date=20240101T000000Z",
            "X-Amz-Signature=[REDACTED]&X-Amz-Credential=[REDACTED]&X-Amz-Date=20240101T000000Z",
        ),
        ("sig=abc&signup=yes&design=flat", "sig=[REDACTED]&signup=yes&design=flat"),
        (
            "AWSAccessKeyId=AK&Signature=s&Expires=1",
            "AWSAccessKeyId=[REDACTED]&Signature=[REDACTED]&Expires=1",
        ),
        ("X-Goog-Signature=ff&x-goog-date=1", "X-Goog-Signature=[REDACTED]&x-goog-date=1"),
        (
            "otp=123456&ssn=1&cvv=1&cvc=1&salt=1&crypted=1&certificate=1&client_secret=1",
            "otp=[REDACTED]&ssn=[REDACTED]&cvv=[REDACTED]&cvc=[REDACTED]&salt=[REDACTED]"
            "&crypted=[REDACTED]&certificate=[REDACTED]&client_secret=[REDACTED]",
        ),
        ("token=&page=1", "token=&page=1"),
        ("next=%2Fhome%3Ftoken%3Dabc", "next=/home%3Ftoken%3D[REDACTED]"),
        ("next=https://u:p@x.example/", "next=https://[REDACTED]@x.example/"),
        ("code=oauth-code&state=xyz", "code=[REDACTED]&state=xyz"),
        ("return_to=/account?token=t&page=2", "return_to=/account?token=[REDACTED]&page=2"),
        ("return_to=/account?sig=s", "return_to=/account?sig=[REDACTED]"),
        ("next=%252Fa%253Ftoken%253Dt", "next=/a%3Ftoken%3D[REDACTED]"),
        ("next=%25252Fa%25253Fsig%25253Dt", "next=/a%3Fsig%3D[REDACTED]"),
        ("a=1#access_token=t", "a=1#access_token=[REDACTED]"),
        ("a=1#sig=t&b=2", "a=1#sig=[REDACTED]&b=2"),
        ("a=/x?b=/y?c=/z?token=t&d=1", "a=/x?b=/y?c=[REDACTED]&d=1"),
        ("a=/x?b=/y?c=/z?page=2", "a=/x?b=/y?c=/z?page=2"),
        ("next=//u:p@x.example/", "next=//[REDACTED]@x.example/"),
        ("api-key=k&X-Api-Key=k&apikey=k", "api-key=[REDACTED]&X-Api-Key=[REDACTED]&apikey=[REDACTED]"),
        ("passphrase=p&wallet_passphrase=p", "passphrase=[REDACTED]&wallet_passphrase=[REDACTED]"),
    ],
)
def test_query_parameters_are_redacted_by_key(query: str, expected: str) -> None:
    """Secret query keys are found in any case, percent-encoded, nested (plain or encoded up
    to three times), repeated, behind ';' or '#'; nesting too deep to take apart costs the
    whole suspect value."""
    assert DEFAULT(make_record(query=query)).query == expected


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("authorization", "Bearer abc.def", "Bearer [REDACTED]"),
        ("authorization", "Basic " + base64.b64encode(b"u:pw").decode(), "Basic [REDACTED]"),
        ("authorization", "secret-without-scheme", "[REDACTED]"),
        ("proxy-authorization", "Basic eHg6eXk=", "Basic [REDACTED]"),
        ("x-api-key", "k-123", "[REDACTED]"),
        ("x-auth-token", "t", "[REDACTED]"),
        ("x-shop-session-id", "s", "[REDACTED]"),
        ("x-csrf-token", "t", "[REDACTED]"),
        ("cookie", "_app_session=abc; locale=de", "_app_session=[REDACTED]; locale=[REDACTED]"),
        ("cookie", "a=1,b=2; bare", "a=[REDACTED],b=[REDACTED]; [REDACTED]"),
        (
            "set-cookie",
            "s=abc; Path=/; Expires=Wed, 21 Oct 2015 07:28:00 GMT; HttpOnly, t=def; Secure; SameSite=Lax",
            "s=[REDACTED]; Path=/; Expires=Wed, 21 Oct 2015 07:28:00 GMT; HttpOnly, t=[REDACTED]; Secure;"
            " SameSite=Lax",
        ),
        ("set-cookie", "path=abc; Path=/", "path=[REDACTED]; Path=/"),
        ("referer", "https://app.example/search?q=shoes", "https://app.example/search?q=shoes"),
        (
            "referer",
            "https://u:pw@app.example/a?token=t#access_token=f",
            "https://[REDACTED]@app.example/a?token=[REDACTED]#access_token=[REDACTED]",
        ),
        (
            "referer",
            "https://app.example/password_resets/abc123/edit",
            "https://app.example/password_resets/[REDACTED]/edit",
        ),
        (
            "referer",
            "https://app.example/login?return_to=/account?token=t",
            "https://app.example/login?return_to=/account?token=[REDACTED]",
        ),
        ("location", "//u:pw@app.example/next", "//[REDACTED]@app.example/next"),
        ("location", "//app.example/a@b", "//app.example/a@b"),
        ("content-type", "multipart/form-data; boundary=x", "multipart/form-data; boundary=x"),
        ("accept", "text/html,*/*;q=0.8", "text/html,*/*;q=0.8"),
    ],
)
def test_headers_are_redacted_by_name_and_value(name: str, value: str, expected: str) -> None:
    """Credential headers keep only the auth scheme, cookies keep their names, URLs are cleaned."""
    record = DEFAULT(make_record(request_headers=headers((name, value))))
    assert record.request_headers == ((name, expected),)


def test_kept_cookies_stay_readable_but_detectors_still_apply() -> None:
    """A cookie in keep_cookies is logged as is, unless a detector recognises its value."""
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl"
    red = redactor(keep_cookies=["locale", "jwt_hint"])
    record = red(make_record(request_headers=headers(("cookie", f"locale=de; s=1; jwt_hint={jwt}"))))
    assert record.request_headers == (("cookie", "locale=de; s=[REDACTED]; jwt_hint=[REDACTED]"),)


def test_extra_credential_headers_from_the_config() -> None:
    """Headers listed in redact.headers are redacted whole, alongside the built-in ones."""
    red = redactor(headers=["x-shop-signature-v2", "x-partner"])
    record = red(make_record(request_headers=headers(("x-partner", "p-123"), ("authorization", "Bearer b"))))
    assert record.request_headers == (("x-partner", "[REDACTED]"), ("authorization", "Bearer [REDACTED]"))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/password_resets/Zx81kq/edit", "/password_resets/[REDACTED]/edit"),
        ("/passwords/new", "/passwords/new"),
        ("/passwords/c2VjcmV0LXJlc2V0LXRva2Vu/edit", "/passwords/[REDACTED]/edit"),
        ("/invitations/ABCDEFGHIJKLMNOPQRST", "/invitations/[REDACTED]"),
        ("/password%5Fresets/Zx81kq/edit", "/password%5Fresets/[REDACTED]/edit"),
        ("/Password_Resets/Zx81kq/edit", "/Password_Resets/[REDACTED]/edit"),
        ("/Magic%5flinks/ABCDEFGHIJKLMNOPQRST", "/Magic%5flinks/[REDACTED]"),
        ("/products/12", "/products/12"),
        ("/account;jsessionid=1A2B3C", "/account;jsessionid=[REDACTED]"),
        ("/redirect/https://u:pw@evil.example/x", "/redirect/https://[REDACTED]@evil.example/x"),
        ("//u:pw@evil.example/x", "//[REDACTED]@evil.example/x"),
        ("/users/@ann/posts", "/users/@ann/posts"),
    ],
)
def test_path_segments_are_redacted_by_the_default_patterns(path: str, expected: str) -> None:
    """Rails one-time-token routes, path parameters and the userinfo of a URL in the path lose
    their secret; other paths are untouched."""
    assert DEFAULT(make_record(path=path)).path == expected


def test_user_path_patterns_redact_their_groups_or_whole_match() -> None:
    """A configured pattern redacts each capture group, or the whole match when it has none."""
    red = redactor(paths=[r"^/share/([^/]+)/(\d+)", r"magic-[a-z]+"])
    assert red(make_record(path="/share/ab12/77/x")).path == "/share/[REDACTED]/[REDACTED]/x"
    assert red(make_record(path="/a/magic-word")).path == "/a/[REDACTED]"


def test_anchored_path_patterns_apply_to_the_path_of_url_headers() -> None:
    """A ``^``-anchored pattern also redacts the path part of a Referer URL."""
    red = redactor(paths=[r"^/share/([^/?]+)$"])
    record = red(make_record(request_headers=headers(("referer", "https://app.example/share/s3cr3t?x=1"))))
    assert record.request_headers == (("referer", "https://app.example/share/[REDACTED]?x=1"),)


JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"x {JWT} y", "x [REDACTED] y"),
        (f"t={JWT[:30]}", "t=[REDACTED]"),
        ("auth Bearer abcdefgh12345678 ok", "auth Bearer [REDACTED] ok"),
        ("Bearer%20abcdefgh12345678", "Bearer%20[REDACTED]"),
        ("card 4111 1111 1111 1111 exp", "card [REDACTED] exp"),
        ("c=4111%201111%201111%201111", "c=[REDACTED]"),
        ("c=4111%2D1111%2d1111%2D1111", "c=[REDACTED]"),
        ("c=4111%2D1111%2D1111%2D1112", "c=4111%2D1111%2D1111%2D1112"),
        (f"q={JWT.replace('.', '%2E')}&x=1", "q=[REDACTED]&x=1"),
        ("n=4111111111111112", "n=4111111111111112"),
        ("ts=1700000000000", "ts=1700000000000"),
        ("AKIAIOSFODNN7EXAMPLE", "[REDACTED]"),
        (
            "k=-----BEGIN RSA PRIVATE KEY-----\\u000aMIIE\\u000a-----END RSA PRIVATE KEY----- ok",
            "k=[REDACTED] ok",
        ),
        ("k=-----BEGIN%20PRIVATE%20KEY-----MIIEvQ", "k=[REDACTED]"),
        ("gh=ghp_" + "a" * 36, "gh=[REDACTED]"),
        ("mail a@example.com", "mail a@example.com"),
    ],
)
def test_detectors_fire_anywhere_in_captured_text(text: str, expected: str) -> None:
    """JWTs, bearer tokens, Luhn-valid cards, AWS keys, private keys and known tokens are
    found in any text field, percent-encoded separators included; look-alikes are left."""
    record = DEFAULT(make_record(user_agent=text, request_headers=headers(("x-note", text))))
    assert record.user_agent == expected
    assert record.request_headers == (("x-note", expected),)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"cc": 4111111111111111}, {"cc": "[REDACTED]"}),
        ({"cc": 4111111111111111.0}, {"cc": "[REDACTED]"}),
        ([{"n": [4111111111111111]}], [{"n": ["[REDACTED]"]}]),
        (
            {"id": 4111111111111112, "ts": 1700000000000, "n": 12, "x": 1.5, "ok": True},
            {"id": 4111111111111112, "ts": 1700000000000, "n": 12, "x": 1.5, "ok": True},
        ),
    ],
)
def test_detectors_see_json_numbers_in_bodies(body: object, expected: object) -> None:
    """A card number sent as a JSON number (integer or integral float) is redacted like one
    sent as a string; other numbers keep their value and type."""
    assert DEFAULT(make_record(request_body=body)).request_body == expected


def test_the_email_detector_is_opt_in() -> None:
    """Emails are found once `email` is among the detectors, encoded @ included."""
    red = redactor(detectors=["email"])
    assert red(make_record(path="/users/jane.doe@example.com")).path == "/users/[REDACTED]"
    assert red(make_record(query="q=jane%40example.com")).query == "q=[REDACTED]"


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("mask", "token=[REDACTED]&page=2"),
        ("drop", "page=2"),
        ("partial", "token=****7890&page=2"),
    ],
)
def test_actions_apply_to_query_values(action: str, expected: str) -> None:
    """mask replaces, drop removes the pair, partial keeps the last four characters."""
    red = redactor(action=action)
    assert red(make_record(query="token=abcdef1234567890&page=2")).query == expected


def test_partial_masks_short_values_whole() -> None:
    """Values under 12 characters are masked whole by partial: four would reveal too much."""
    assert redactor(action="partial")(make_record(query="token=abc123")).query == "token=[REDACTED]"


def test_keyed_hash_is_stable_per_secret_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same secret gives the same token under one key and a different one under another."""
    monkeypatch.setenv("PL_KEY_A", "a" * 32)
    monkeypatch.setenv("PL_KEY_B", "b" * 32)
    red_a = redactor(action="hash", hash_key_env="PL_KEY_A")
    red_b = redactor(action="hash", hash_key_env="PL_KEY_B")
    one = red_a(make_record(query="token=s3cret")).query
    again = red_a(make_record(query="token=s3cret&x=1")).query
    other_key = red_b(make_record(query="token=s3cret")).query
    assert one is not None and one.startswith("token=[hash:") and "s3cret" not in one
    assert again == f"{one}&x=1"
    assert other_key != one


def test_hash_ignores_how_a_value_was_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A query value hashes the same whether it arrived as ``a b``, ``a+b`` or ``a%20b``."""
    monkeypatch.setenv("PL_KEY", KEY)
    red = redactor(actions={"query": "hash"}, hash_key_env="PL_KEY")
    tokens = {red(make_record(query=f"token={v}")).query for v in ("a+b", "a%20b")}
    assert len(tokens) == 1


def test_per_target_actions_override_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """`actions` picks an action per target or detector; the rest use `action`."""
    red = redactor(action="mask", actions={"credit_card": "partial", "headers": "drop"})
    record = red(
        make_record(
            query="c=4111111111111111&token=t",
            request_headers=headers(("authorization", "Bearer x"), ("accept", "*/*")),
        )
    )
    assert record.query == "c=****1111&token=[REDACTED]"
    assert record.request_headers == (("accept", "*/*"),)


def test_userinfo_never_reaches_the_domain() -> None:
    """A Host value carrying ``user:pass@`` is logged as the host alone."""
    assert DEFAULT(make_record(domain="bob:pw@app.example.com")).domain == "app.example.com"


def test_bodies_are_redacted_by_key_at_any_depth() -> None:
    """Secret keys in captured bodies are redacted however deep; other values stay."""
    body = {
        "user": {"email": "a@b.c", "password": "pw", "name": "Ann", "cards": [{"cvv": 123, "last4": "1111"}]},
        "api_key": {"nested": "object"},
        "note": "see https://x.example/?token=abc",
        "raw": '{"secret": "inner"}',
        "password": None,
    }
    record = DEFAULT(make_record(request_body=body))
    assert record.request_body == {
        "user": {
            "email": "[REDACTED]",
            "password": "[REDACTED]",
            "name": "Ann",
            "cards": [{"cvv": "[REDACTED]", "last4": "1111"}],
        },
        "api_key": "[REDACTED]",
        "note": "see https://x.example/?token=[REDACTED]",
        "raw": '{"secret":"[REDACTED]"}',
        "password": None,
    }


def test_drop_removes_body_keys() -> None:
    """With drop, a secret key and its value leave the body entirely."""
    red = redactor(actions={"body": "drop"})
    assert red(make_record(request_body={"password": "x", "a": 1})).request_body == {"a": 1}


def test_keep_keys_exempts_default_keys() -> None:
    """A key listed in keep_keys is logged even though a default substring matches it."""
    red = redactor(keep_keys=["sort_key", "code"])
    assert (
        red(make_record(query="sort_key=name&code=x&api_key=k")).query
        == "sort_key=name&code=x&api_key=[REDACTED]"
    )


def test_user_keys_extend_the_defaults_with_substrings_and_patterns() -> None:
    """redact.keys adds substrings and /re2/ patterns, matched case-insensitively."""
    red = redactor(keys=["iban", "/^pin$/"])
    record = red(make_record(query="IBAN_number=DE00&pin=1234&spin=1&password=x"))
    assert record.query == "IBAN_number=[REDACTED]&pin=[REDACTED]&spin=1&password=[REDACTED]"


def test_client_ip_anonymisation_applies_to_the_record_only() -> None:
    """With anonymize_ip, client.ip and source.ip keep their /24 (IPv4) or /48 (IPv6)."""
    red = redactor(anonymize_ip=True)
    record = red(
        make_record(
            client_ip="203.0.113.77",
            source_ip="2001:db8:abcd:12::1",
            request_headers=headers(("x-forwarded-for", "198.51.100.9, 10.1.2.3:8080")),
        )
    )
    assert (record.client_ip, record.source_ip) == ("203.0.113.0", "2001:db8:abcd::")
    assert record.request_headers == (("x-forwarded-for", "198.51.100.0, 10.1.2.0:8080"),)
    assert red(make_record(client_ip="::ffff:192.0.2.200")).client_ip == "::ffff:192.0.2.0"
    assert DEFAULT(make_record(client_ip="203.0.113.77")).client_ip == "203.0.113.77"


def test_error_messages_are_cleaned_as_free_text() -> None:
    """An error message quoting a request line or headers loses the secrets in it."""
    message = (
        "Bad HTTP request line: b'GET http://bob:pw@h/?token=abc HTTP/1.1\\r\\n"
        "Authorization: Basic Ym9iOnB3\\r\\nCookie: s=1\\r\\n'"
    )
    cleaned = DEFAULT(make_record(error_type="request_invalid", error_message=message)).error_message
    assert cleaned == (
        "Bad HTTP request line: b'GET http://[REDACTED]@h/?token=[REDACTED] HTTP/1.1\\r\\n"
        "Authorization: [REDACTED]\\r\\nCookie: [REDACTED]\\r\\n'"
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "INFO mitmproxy.proxy.server: 127.0.0.1:57264: Bad HTTP request line: "
            "b'GET http://bob:CANARY1@127.0.0.1/ HTTP/1.1'",
            "INFO mitmproxy.proxy.server: 127.0.0.1:57264: Bad HTTP request line: "
            "b'GET http://[REDACTED]@127.0.0.1/ HTTP/1.1'",
        ),
        (
            "INFO mitmproxy.proxy.server: Client closed connection before completing request headers: "
            "b'GET /?token=CANARY5 HTTP/1.1\\r\\nAuthorization: Bearer CANARY6\\r\\n'",
            "INFO mitmproxy.proxy.server: Client closed connection before completing request headers: "
            "b'GET /?token=[REDACTED] HTTP/1.1\\r\\nAuthorization: [REDACTED]\\r\\n'",
        ),
        ("GET /password_resets/Zx81kq/edit HTTP/1.1", "GET /password_resets/[REDACTED]/edit HTTP/1.1"),
        ("client 203.0.113.7 disconnected", "client 203.0.113.7 disconnected"),
    ],
)
def test_clean_text_redacts_what_mitmproxy_logs_about_bad_requests(line: str, expected: str) -> None:
    """The lines mitmproxy logs at info level for malformed requests lose their secrets."""
    assert DEFAULT.clean_text(line) == expected


def test_a_record_with_nothing_to_hide_is_returned_as_is() -> None:
    """The common case returns the very same record object, not a copy."""
    record = make_record(
        path="/products/42",
        query="page=2&sort=price",
        request_headers=headers(("referer", "https://app.example/products?page=1"), ("accept", "*/*")),
    )
    assert DEFAULT(record) is record


def test_redaction_failure_withholds_request_fields(caplog: pytest.LogCaptureFixture) -> None:
    """If redaction raises, the record is still logged but without any request text, tagged,
    and the log line names only the exception type."""
    record = make_record(
        path="/secret-path",
        query="q=1",
        request_headers=headers(("referer", "r")),
        request_body={"a": object()},
    )
    with caplog.at_level(logging.ERROR, logger="proxylog.redact"):
        red = Redactor(RedactSpec())
        result = red(record)
    assert result.path == "[REDACTED]" and result.query == "[REDACTED]"
    assert result.request_headers == (("referer", "[REDACTED]"),)
    assert result.request_body is None
    assert FAILED_TAG in result.tags
    assert red.failures == 1
    assert "secret-path" not in caplog.text
    encode_record(result)  # still encodable


def test_the_fast_path_and_the_full_pass_agree_on_examples() -> None:
    """For records with something to hide, the shortcut defers to the full pass."""
    record = make_record(query="a=%74oken%3Dx", request_headers=headers(("referer", "https://x/?sig=1")))
    assert DEFAULT(record) == DEFAULT.full(record)
    assert DEFAULT(record).query == "a=token%3D[REDACTED]"


@pytest.mark.parametrize("anonymize", [False, True])
def test_values_known_clean_are_still_redacted_in_headers_that_need_it(anonymize: bool) -> None:
    """The full pass skips plain header values an earlier request proved clean; the same
    text in a credential or IP header is still redacted, and the result matches a fresh
    Redactor's."""
    value = "203.0.113.9"
    spec = parse_config({"redact": {"anonymize_ip": anonymize}}).redact
    warm, fresh = Redactor(spec), Redactor(spec)
    seen = warm(make_record(request_headers=headers(("accept", value))))
    assert seen.request_headers == (("accept", value),)
    record = make_record(
        request_headers=headers(("accept", value), ("x-api-key", value), ("x-forwarded-for", value))
    )
    redacted = warm(record)
    assert redacted == fresh(record)
    assert dict(redacted.request_headers)["x-api-key"] == "[REDACTED]"
    assert (dict(redacted.request_headers)["x-forwarded-for"] == value) is not anonymize
