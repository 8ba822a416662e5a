"""Property tests: canary secrets injected at random places never reach a sink, through the
real record path (mitmproxy test flows through the ProxyLog addon into a MemorySink), and
fields holding no secret come out unchanged."""

from __future__ import annotations

import base64
import functools
import logging
import random
import string
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from proxylog.config import Config, parse_config
from proxylog.config.redact import CREDENTIAL_HEADERS
from proxylog.mitm.addon import ProxyLog
from proxylog.mitm.flows import record_from_flow, state_of
from proxylog.record import AccessRecord, flatten, to_ecs
from proxylog.redact import Redactor
from proxylog.runtime import Runtime
from proxylog.testing import MemorySink, make_record

BATCH = 50
EXAMPLES = 100  # x BATCH = 5,000 generated requests
HASH_ENV = "PROXYLOG_PROPERTY_HASH_KEY"
CREDENTIALS = (*CREDENTIAL_HEADERS, "x-session-token", "x-shop-secret")
BENIGN_HEADERS = ("accept", "x-trace-id", "content-type")
CAPTURED = (*CREDENTIALS, "cookie", "referer", *BENIGN_HEADERS)
NAME_REDACTED = {f"proxylog.http.request.headers.{h}" for h in (*CREDENTIALS, "cookie")} | {
    "proxylog.http.response.headers.set-cookie"
}
SECRET_KEYS = (
    "password",
    "password_confirmation",
    "passwd_hint",
    "api_token",
    "auth_token",
    "secret",
    "client_secret",
    "access_key",
    "salt",
    "encrypted_pin",
    "certificate",
    "otp_attempt",
    "ssn",
    "cvv",
    "cvc",
    "email",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
)
BENIGN_KEYS = ("page", "sort", "q", "lang", "utm_source", "per", "view")
CANARY_ALPHABET = string.ascii_letters + string.digits + "-._~+/="


def canary_forms(canary: str) -> set[str]:
    """The canary raw, percent-encoded (up to four times over) and base64-encoded at every
    alignment."""
    forms = {canary, quote(canary, safe=""), quote_plus(canary), quote(canary), quote(canary, safe="/=")}
    encoded = quote(canary, safe="")
    for _ in range(3):
        encoded = quote(encoded, safe="")
        forms.add(encoded)
    raw = canary.encode()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        core = encoded[(offset * 4 + 2) // 3 + 1 : -4]
        forms |= {core, core.replace("+", "-").replace("/", "_")}
    return {f for f in forms if len(f) >= 8}


@functools.cache
def config_for(action: str) -> Config:
    return parse_config(
        {
            "record": {
                "headers": list(CAPTURED),
                "response_headers": ["set-cookie", "location", "content-type"],
            },
            "redact": {"action": action, "hash_key_env": HASH_ENV, "body": {"capture": True}},
        }
    )


def random_case(rnd: random.Random, text: str) -> str:
    return "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in text)


def encoded_key(rnd: random.Random) -> str:
    """A secret key in any case, some characters percent-encoded, maybe Rails-nested."""
    key = random_case(rnd, rnd.choice(SECRET_KEYS))
    hex_case = rnd.choice("Xx")
    key = "".join(f"%{ord(c):02{hex_case}}" if rnd.random() < 0.25 else c for c in key)
    return rnd.choice(["{}", "user[{}]", "user%5B{}%5D", "a[b][{}]"]).format(key)


def encoded_value(rnd: random.Random, canary: str) -> str:
    return rnd.choice([quote(canary, safe=""), quote_plus(canary), quote(canary, safe="/=")])


def nested_url(rnd: random.Random, canary: str) -> str:
    """A parameter value holding a URL with the canary under a secret key: plain (as a browser
    sends ``return_to=/account?token=…``), or percent-encoded once, twice or three times."""
    key = rnd.choice([random_case(rnd, rnd.choice(SECRET_KEYS)), encoded_key(rnd)])
    # Plain, a "&" would end the value: the secret pair comes first, or is nested once more.
    url = rnd.choice(["/account?", "/a?next=/b?", "https://ref.example.com/a?page=1&"]) + f"{key}={canary}"
    for _ in range(rnd.choice([0, 0, 1, 2, 3])):
        url = quote(url, safe="")
    return url


def word(rnd: random.Random, low: int, high: int) -> str:
    return "".join(rnd.choice(string.ascii_lowercase) for _ in range(rnd.randint(low, high)))


@dataclass
class Plan:
    """One generated request: where the canary went, and the benign parts."""

    method: str = "GET"
    path: str = "/products/7"
    query: list[str] = field(default_factory=list)
    fragment: str | None = None
    benign_pairs: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def make_plan(rnd: random.Random, canary: str) -> Plan:
    """A request with the canary in up to six random places (none, sometimes) among fifteen."""
    plan = Plan()
    places = set(rnd.sample(range(15), rnd.randint(0, 6)))
    plan.benign_pairs = [f"{rnd.choice(BENIGN_KEYS)}={word(rnd, 1, 6)}" for _ in range(rnd.randint(0, 3))]
    plan.query = list(plan.benign_pairs)
    host = url_host = "app.example.com"
    plan.headers = [("Accept", "text/html"), ("X-Trace-Id", word(rnd, 0, 8))]
    if 0 in places:
        value = rnd.choice(
            [
                canary,
                f"Bearer {canary}",
                "Basic " + base64.b64encode(f"bob:{canary}".encode()).decode(),
                f"Token token={canary}",
            ]
        )
        plan.headers.append((random_case(rnd, rnd.choice(CREDENTIALS)), value))
    if 1 in places:
        cookies = [f"{n}={canary if rnd.random() < 0.5 else 'v1'}" for n in ("_app_session", "uid", "theme")]
        plan.headers.append(("Cookie", f"{'; '.join(cookies)}; remember={canary}"))
    if 2 in places:
        for _ in range(rnd.randint(1, 3)):  # repeated secret keys
            pair = f"{encoded_key(rnd)}={encoded_value(rnd, canary)}"
            plan.query.insert(rnd.randint(0, len(plan.query)), pair)
    if 3 in places:
        plan.headers.append(("Referer", f"https://bob:{quote(canary, safe='')}@ref.example.com/page"))
    if 4 in places:
        host = f"bob:{canary}@app.example.com"
        url_host = f"bob:{quote(canary, safe='')}@app.example.com"  # RFC 3986: no raw "/" in userinfo
    if 5 in places:
        plan.path = f"/password_resets/{quote(canary, safe='')}/edit"
    if 6 in places:
        plan.headers.append(("Referer", f"https://{url_host}/password_resets/{quote(canary, safe='')}"))
    if 7 in places:
        pair = f"{encoded_key(rnd)}={encoded_value(rnd, canary)}"
        plan.headers.append(("Referer", f"https://ref.example.com/x?{pair}"))
    if 8 in places:
        plan.response_headers.append(("Location", f"/reset?reset_password_token={quote(canary, safe='')}"))
    if 9 in places:
        plan.response_headers.append(
            ("Set-Cookie", f"_s={canary}; Path=/; Expires=Wed, 21 Oct 2015 07:28:00 GMT; HttpOnly")
        )
    if 10 in places:
        inner: Any = {rnd.choice(SECRET_KEYS): canary, "name": "ann"}
        for _ in range(rnd.randint(0, 4)):
            inner = {"data": inner} if rnd.random() < 0.5 else [inner, 1]
        plan.method, plan.body = "POST", orjson.dumps({"user": inner, "note": "hello"})
        plan.headers.append(("Content-Type", "application/json"))
    elif 11 in places:
        plan.method = "POST"
        plan.body = f"{encoded_key(rnd)}={quote_plus(canary)}&name=ann".encode()
        plan.headers.append(("Content-Type", "application/x-www-form-urlencoded"))
    if 12 in places:
        plan.query.insert(
            rnd.randint(0, len(plan.query)), f"{rnd.choice(['return_to', 'next'])}={nested_url(rnd, canary)}"
        )
    if 13 in places:
        plan.headers.append(("Referer", f"https://ref.example.com/login?next={nested_url(rnd, canary)}"))
    if 14 in places:  # a fragment in the request line: the client sent it, so it is logged
        key = rnd.choice([random_case(rnd, rnd.choice(SECRET_KEYS)), encoded_key(rnd)])
        plan.fragment = f"{key}={rnd.choice([canary, encoded_value(rnd, canary)])}"
    plan.headers.insert(0, ("Host", host))
    plan.headers.append(("User-Agent", "Mozilla/5.0 (X11; Linux x86_64)"))
    return plan


def make_flow(plan: Plan) -> http.HTTPFlow:
    target = plan.path + ("?" + "&".join(plan.query) if plan.query else "")
    target += "" if plan.fragment is None else "#" + plan.fragment
    headers = [(n.encode(), v.encode()) for n, v in plan.headers]
    if plan.body:
        headers.append((b"Content-Length", str(len(plan.body)).encode()))
    request = http.Request(
        "app.example.com",
        80,
        plan.method.encode(),
        b"http",
        b"",
        target.encode(),
        b"HTTP/1.1",
        http.Headers(headers),
        plan.body,
        None,
        1_700_000_000.0,
        1_700_000_000.1,
    )
    flow = tflow.tflow(req=request, resp=True)
    for name, value in plan.response_headers:
        flow.response.headers.add(name, value)
    return flow


def unchanged_where_no_secret(
    before: dict[str, Any], after: dict[str, Any], plan: Plan, forms: set[str]
) -> None:
    flat_before, flat_after = flatten(before), flatten(after)
    for key, value in flat_before.items():
        if key in NAME_REDACTED or key == "event.duration":
            continue
        text = orjson.dumps(value).decode()
        if any(form in text for form in forms):
            continue
        assert flat_after.get(key) == value, key
    query = flat_after.get("url.query")
    if plan.benign_pairs:
        assert set(plan.benign_pairs) <= set(query.replace("#", "&").split("&")), query


@pytest.fixture
def hash_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HASH_ENV, "p" * 32)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    phases=(Phase.explicit, Phase.generate),  # shrinking 20-request batches takes minutes
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_canaries_never_reach_a_sink(
    data: st.DataObject, hash_key: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Over 10,000 generated requests, a canary secret placed in credential headers, cookies,
    query keys (any case, encoded, nested, repeated), URLs nested in a query or Referer value
    (plain or encoded up to three times), a request-line fragment, userinfo, the path,
    Referer, Location, Set-Cookie and JSON or form bodies appears in no sink line, raw,
    percent-encoded or base64; every field that held no secret is logged exactly as without
    redaction."""
    canary = "Cy" + data.draw(st.text(CANARY_ALPHABET, min_size=16, max_size=28)) + "Qz"
    forms = canary_forms(canary)
    action = data.draw(st.sampled_from(["mask", "hash", "partial", "drop"]))
    rnd = random.Random(data.draw(st.integers(0, 2**64)))  # plain random: fast, and seeded
    config = config_for(action)
    sink = MemorySink()
    addon = ProxyLog(runtime=Runtime(config, sinks=[sink]))
    batch = [make_plan(rnd, canary) for _ in range(BATCH)]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="proxylog"), taddons.context(addon) as tctx:
        assert addon.runtime is not None
        addon.runtime.start()
        flows = [make_flow(plan) for plan in batch]
        for flow in flows:
            await tctx.cycle(addon, flow)
        await addon.runtime.close(10)
    assert addon.runtime.internal_errors == 0
    assert len(sink.lines) == BATCH
    by_id = {orjson.loads(line)["http"]["request"]["id"]: line for line in sink.lines}
    for plan, flow in zip(batch, flows, strict=True):
        state = state_of(flow)
        line = by_id[state.request_id].decode()
        leaked = [form for form in forms if form in line]
        assert not leaked, (leaked, line[line.find(leaked[0]) - 300 :] if leaked else "")
        assert "redaction_failed" not in line
        before = to_ecs(record_from_flow(flow, state, config.record, body_parser=addon.runtime.body_parser))
        unchanged_where_no_secret(before, orjson.loads(line), plan, forms)
    assert not [form for form in forms if form in caplog.text]


FRAGMENTS = (
    "token",
    "ToKeN",
    "%74",
    "%74oken",
    "=",
    "&",
    ";",
    "?",
    "#",
    "://",
    "@",
    "/",
    "password_resets/",
    "passwords/",
    "eyJhbGciOiJIUzI1NiJ9",
    ".",
    "Bearer ",
    "4111",
    "1111",
    " ",
    "%20",
    "%3D",
    "%3d",
    "%2F",
    "%3A",
    "%25",
    "+",
    "sig",
    "Signature",
    "[",
    "]",
    "key",
    "code",
    "a",
    "b",
    "1",
    "7",
    "\n",
    "\u212a",
    "\u017f",
    "user",
    ":",
    "AKIA",
    "ABCDEFGHIJKLMNOP",
    "-----BEGIN PRIVATE KEY-----",
    "_key",
    "ghp_",
    "q",
    "x",
    "%40",
    "example.com",
    "\u00e9",
    "\u0130",
    "pin",
    "share/",
    "theme",
)


# The pieces the shortcut's hints exist for, drawn more often.
TRICKY = ("%74oken", "%74", "=", "&", "%3D", "%2F", "%3A", "://", "@", "/", "?", "sig", "key", "#", "//")
TRICKY += ("%253D", "%252F", "%25253D", "4111%2D")
WEIGHTED = FRAGMENTS + TRICKY * 3


def fragment_text(rnd: random.Random) -> str:
    return "".join(rnd.choice(WEIGHTED) for _ in range(rnd.randint(0, 10)))


@functools.cache
def redactors() -> tuple[Redactor, ...]:
    configs: list[dict[str, Any]] = [
        {},
        {"keys": ["/^pin$/"], "paths": [r"^/share/([^/]+)$"], "keep_keys": ["code"]},
        {"detectors": ["email"], "keep_cookies": ["theme"], "action": "partial", "anonymize_ip": True},
    ]
    return tuple(Redactor(parse_config({"redact": c}).redact) for c in configs)


SLOTS = ("path", "query", "user_agent", "domain", "referer", "x-note", "accept", "location")


def fragment_record(rnd: random.Random) -> AccessRecord:
    """Mostly one field of fragments among benign ones, so that the shortcut's decision rests
    on that field alone; sometimes every field at once."""
    chosen = set(SLOTS) if rnd.random() < 0.2 else {rnd.choice(SLOTS)}
    text = {slot: fragment_text(rnd) if slot in chosen else "" for slot in SLOTS}
    return make_record(
        path="/" + text["path"],
        query=text["query"] or None,
        user_agent=text["user_agent"] or "Mozilla/5.0",
        domain=text["domain"].replace("@", "") or "app.example.com",
        request_headers=tuple((name, text[name] or "text/html") for name in ("referer", "x-note", "accept")),
        response_headers=(("location", text["location"] or "/"),),
    )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**64))
def test_the_shortcut_never_skips_a_redaction(seed: int) -> None:
    """Whenever the one-search shortcut lets a record through unchanged, the full pass would
    not have changed it either (the prefilter is a superset of what redaction touches);
    6,000 records of fragments chosen to sit on the boundaries, under three configs."""
    rnd = random.Random(seed)
    for _ in range(20):
        record = fragment_record(rnd)
        for redactor in redactors():
            assert redactor(record) == redactor.full(record), record
