"""Every kind of event proxylog writes conforms to ECS (tests/data/ecs_flat.yml): ECS field
names with ECS types and allowed values, proxylog's own fields under `proxylog.*`."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxylog.alerts import AlertDispatcher
from proxylog.config import Config, parse_config
from proxylog.config.redact import RedactSpec
from proxylog.record import AccessRecord, RuleHit, Schema, ban_document, encode_document, encode_record
from proxylog.runtime import Runtime
from proxylog.sinks.base import SinkStats
from proxylog.sinks.integrity import Chain
from proxylog.sinks.losses import LossLedger
from proxylog.testing import FakeClock, MemorySink, make_record
from tests._ecs import assert_ecs, fields, flat, problems

SCHEMAS: tuple[Schema, ...] = ("nested", "flat")

RECORDS: dict[str, AccessRecord] = {
    "plain": make_record(),
    "query, captured headers, port": make_record(
        query="a=1&b=2",
        url_port=8443,
        request_headers=(("referer", "https://r.example/"), ("content-type", "text/plain"), ("x-a", "1")),
        response_headers=(("content-type", "text/html"),),
        upstream_ms=2.5,
        truncated=("url.path",),
    ),
    "blocked by a rule": make_record(
        status=403,
        action="blocked",
        enforced=True,
        rules=(RuleHit("probe", 11, 10, 60.0), RuleHit("near", 3, 5, 60.0)),
        tags=("probe", "scanner"),
    ),
    "would block (monitor)": make_record(action="would_block", rules=(RuleHit("probe", 10, 10, 60.0),)),
    "no response (error)": make_record(status=None, error_type="client_disconnect", error_message="gone"),
    "proxylog's 502": make_record(status=502, error_type="upstream_connect", error_message="refused"),
    "behind a trusted proxy": make_record(client_ip="198.51.100.9", source_ip="10.0.0.2"),
    "JSON body captured": make_record(method="POST", request_body={"user": "a", "password": "[REDACTED]"}),
    "text body captured": make_record(method="POST", request_body="plain text"),
    "IPv6 client": make_record(client_ip="2001:db8::1", source_ip="2001:db8::1"),
    "refused by an active ban": make_record(status=403, action="blocked", enforced=True, ban_rule="probe"),
    "an inspection rule's score": make_record(
        status=403,
        action="blocked",
        enforced=True,
        rules=(RuleHit("sqli", 1, 1, 60.0, 10, ("942100", "942190")),),
        tags=("attack-sqli",),
    ),
}


def _decode(line: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(line)
    return doc


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("case", list(RECORDS))
def test_access_records_are_ecs(case: str, schema: Schema) -> None:
    """Access records of every shape, nested and flat, carry only ECS fields and proxylog.*."""
    assert_ecs(_decode(encode_record(RECORDS[case], schema)))


def test_access_record_uses_the_ecs_fields_that_fit() -> None:
    """Referer, tags, the deciding rule, url.original/port, client.port, observer and
    ecs.version are ECS fields; Content-Type and other headers stay under proxylog.http."""
    doc = flat(_decode(encode_record(RECORDS["query, captured headers, port"])))
    assert doc["ecs.version"] and doc["observer.type"] == "proxy" and doc["observer.product"] == "proxylog"
    assert doc["http.request.referrer"] == "https://r.example/"
    assert doc["proxylog.http.request.headers.content-type"] == "text/plain"
    assert doc["proxylog.http.response.headers.content-type"] == "text/html"
    assert "http.request.mime_type" not in doc  # ECS: from the body's content, never the header
    assert doc["url.original"] == "/?a=1&b=2" and doc["url.port"] == 8443
    assert doc["client.port"] == doc["source.port"] and doc["event.dataset"] == "proxylog.access"
    blocked = flat(_decode(encode_record(RECORDS["blocked by a rule"])))
    assert blocked["rule.id"] == "probe" and blocked["tags"] == ["probe", "scanner"]
    assert blocked["event.category"] == ["web", "intrusion_detection"]
    assert blocked["event.type"] == ["access", "denied"]
    forwarded = flat(_decode(encode_record(RECORDS["behind a trusted proxy"])))
    assert forwarded["network.forwarded_ip"] == "198.51.100.9" and "client.port" not in forwarded
    body = flat(_decode(encode_record(RECORDS["JSON body captured"])))
    assert orjson.loads(body["http.request.body.content"]) == {"user": "a", "password": "[REDACTED]"}


def test_the_validator_rejects_what_ecs_rejects() -> None:
    """The check itself fails on each kind of non-conformance it exists to catch."""
    good = _decode(encode_record(make_record()))
    assert problems(good) == []
    bad = [
        {**good, "integrity": {"seq": 1}},  # a custom field outside proxylog.*
        {**good, "http": {**good["http"], "request": {**good["http"]["request"], "body": {"content": {}}}}},
        {**good, "event": {**good["event"], "kind": "weird"}},
        {**good, "event": {**good["event"], "type": ["denied"]}},  # not a web event type
        {**good, "event": {**good["event"], "duration": "12"}},
        {**good, "tags": "probe"},  # tags is an array
        {**good, "proxylog": {**good["proxylog"], "ban": {"until": 1_700_000_000.0}}},
        {key: value for key, value in good.items() if key != "ecs"},
    ]
    for doc in bad:
        assert problems(doc), doc
    assert len(fields()) > 1000


def _runtime(schema: Schema, **config: Any) -> tuple[Runtime, MemorySink, FakeClock]:
    clock = FakeClock()
    base = Config()
    record = base.record.__class__(schema=schema)
    runtime = Runtime(Config(record=record, **config), sinks=[sink := MemorySink()], clock=clock)
    return runtime, sink, clock


async def _delivered(runtime: Runtime, sink: MemorySink) -> list[dict[str, Any]]:
    runtime.start()
    assert await runtime.flush(5.0)
    await runtime.close(5.0)
    return sink.documents()


@pytest.mark.parametrize("schema", SCHEMAS)
async def test_audits_and_ban_events_from_the_runtime_are_ecs(schema: Schema) -> None:
    """A mode change (audit), an operator ban, its lift and a ban's expiry are ECS events,
    with the banned address in client.ip and the ban's times as dates."""
    runtime, sink, clock = _runtime(schema)
    runtime.set_mode("enforce", "test")
    runtime.engine.ban("192.0.2.10", 60.0)
    runtime.engine.unban("192.0.2.10")
    runtime.engine.ban("198.51.100.0/24", 30.0, reason="noisy")
    clock.advance(31)
    runtime.engine.check(_facts("203.0.113.1", clock()))  # sweeps the expired ban
    docs = await _delivered(runtime, sink)
    for doc in docs:
        assert_ecs(doc)
    events = [flat(doc) for doc in docs]
    actions = [event["event.action"] for event in events]
    assert actions == ["audit.mode", "ban", "unban", "ban", "unban"]
    ban, lifted, _, expired = events[1:]
    assert ban["client.ip"] == "192.0.2.10" and ban["event.type"] == ["denied", "start"]
    assert ban["event.end"] == "2023-11-14T22:14:20.000000Z" and ban["rule.id"] == "manual"
    assert lifted["event.type"] == ["allowed", "end"] and lifted["proxylog.ban.ended"] == "lifted"
    assert "client.ip" not in expired and expired["proxylog.ban.key"] == "198.51.100.0/24"
    assert expired["proxylog.ban.ended"] == "expired"
    assert runtime.metrics.bans == {"created": 2, "expired": 1, "lifted": 1}


async def test_audit_values_have_one_type_for_every_command() -> None:
    """A structured audit value (an operator's ban) is JSON text, as a mode or an address is a
    string, so one index mapping holds proxylog.audit.new for every command."""
    runtime, sink, _ = _runtime("nested")
    runtime.audit("ban", "test", None, {"key": "192.0.2.1", "until": 1_700_000_060.0})
    runtime.audit("mode", "test", "monitor", "enforce")
    docs = [flat(doc) for doc in await _delivered(runtime, sink)]
    assert [type(doc["proxylog.audit.new"]) for doc in docs] == [str, str]
    assert orjson.loads(docs[0]["proxylog.audit.new"])["until"] == "2023-11-14T22:14:20.000000Z"


async def test_ban_events_are_anonymised_like_records() -> None:
    """With redact.anonymize_ip, a ban event names the client's /24, never its address."""
    runtime, sink, _ = _runtime("nested", redact=RedactSpec(anonymize_ip=True))
    runtime.engine.ban("192.0.2.10", 60.0)
    [doc] = await _delivered(runtime, sink)
    assert doc["client"]["ip"] == "192.0.2.0" and doc["proxylog"]["ban"]["key"] == "192.0.2.0"
    assert b"192.0.2.10" not in b"".join(sink.lines)


def _facts(ip: str, ts: float) -> Any:
    from proxylog.rules import RequestFacts

    return RequestFacts(ts, ip, "GET", "/", None, None, frozenset(), "app.example.com")


@pytest.mark.parametrize("schema", SCHEMAS)
def test_a_request_refused_by_a_ban_names_the_banning_rule(schema: Schema) -> None:
    """A request an active ban refuses matches no rule itself; its record's rule.* is the
    ban's rule (`manual` for an operator's ban), and it is ECS."""
    runtime, _, clock = _runtime(schema, mode="enforce")
    runtime.engine.ban("192.0.2.10", 60.0)
    verdict = runtime.engine.check(_facts("192.0.2.10", clock()))
    assert verdict.block and verdict.rules == ()
    record = make_record(
        client_ip="192.0.2.10", status=403, action="blocked", enforced=True, ban_rule=verdict.ban_rule
    )
    doc = _decode(encode_record(record, schema))
    assert_ecs(doc)
    event = flat(doc)
    assert (event["rule.id"], event["rule.name"], event["rule.ruleset"]) == ("manual", "manual", "proxylog")
    assert event["event.type"] == ["access", "denied"]


def test_alert_events_are_ecs_alerts() -> None:
    """An alert is event.kind alert, with the client in client.ip and the rule in rule.*."""
    docs: list[dict[str, Any]] = []
    clock = FakeClock()
    webhook = {"type": "webhook", "url": "http://127.0.0.1:9/", "cooldown": 0}
    specs = parse_config({"alerts": [webhook]}).alerts
    alerts = AlertDispatcher(specs, docs.append, clock=clock)
    try:
        alerts.notify("ban", "probe", "192.0.2.7", count=10, threshold=10, until=clock() + 60)
        alerts.notify("sink_failure", "sink", "siem", error="refused")
    finally:
        alerts.close()
    for doc in docs:
        assert_ecs(_decode(encode_document(doc)))
        assert_ecs(_decode(encode_document(doc, "flat")))
    ban = flat(docs[0])
    assert ban["event.kind"] == "alert" and ban["client.ip"] == "192.0.2.7" and ban["rule.id"] == "probe"
    assert ban["proxylog.alert.ts"] == "2023-11-14T22:13:20.000000Z"
    assert "client.ip" not in flat(docs[1])


def test_delivery_markers_are_ecs() -> None:
    """Drop, quarantine and recovery markers are ECS events with dates for their times."""
    stats = SinkStats(queue_drops=3, quarantined=1)
    clock = FakeClock()
    ledger = LossLedger("siem", stats, clock, "/tmp/quarantine.ndjson")
    ledger.outage_began(clock() - 5)
    lines, _ = ledger.owed()
    docs = [_decode(line) for line in lines]
    actions = [d["event"]["action"] for d in docs]
    assert actions == ["records_dropped", "records_quarantined", "sink_recovered"]
    for doc in docs:
        assert_ecs(doc)
    assert docs[2]["proxylog"]["outage"]["since"] == "2023-11-14T22:13:15.000000Z"


@pytest.mark.parametrize("schema", SCHEMAS)
def test_chained_lines_are_ecs(schema: Schema) -> None:
    """Integrity seals and the chain suffix live under proxylog.integrity, on both schemas."""
    chain = Chain(b"k" * 32, "file")
    start = chain.boundary("integrity_chain_start")
    lines = [start, encode_record(make_record(), schema), chain.boundary("integrity_chain_end")]
    linked, _ = chain.link(lines)
    docs = [_decode(line) for line in linked.splitlines()]
    for doc in docs:
        assert_ecs(doc)
    assert [flat(d)["proxylog.integrity.seq"] for d in docs] == [1, 2, 3]
    assert flat(docs[0])["event.type"] == ["start"]


def test_ban_document_of_a_network_names_no_client() -> None:
    """A CIDR ban is no client address: it stays in proxylog.ban.key."""
    ts = 1_700_000_000.0
    doc = ban_document("ban", "198.51.100.0/24", "manual", ts, since=ts, until=ts + 60)
    assert_ecs(doc)
    assert "client" not in doc and doc["proxylog"]["ban"]["key"] == "198.51.100.0/24"
