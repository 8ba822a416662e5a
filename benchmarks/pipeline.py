"""The per-request pipeline in-process: redaction alone, then record + redact + rules + serialize.

    .venv/bin/python benchmarks/pipeline.py [--records 30000] [--repeat 5] [--cpu N]

Times are CPU time of the benchmark thread (time a shared VM gives other tenants is not
counted), with the process pinned to one CPU.

1. Redaction. A typical request's record (10 captured headers, 3 query parameters, no
   body) through the Redactor of the default config: 1,000 distinct records of that shape
   per batch, --repeat x 10 batches, the median and p99 of the per-record batch means. For
   scale, the same with secrets to hide (Authorization, Cookie, a token in the query) and
   with a captured JSON body.
2. Pipeline on the mitmproxy plane. Flows of the same request (built off the clock) through
   the stages the addon runs, in its order: start_flow (Pipeline.begin: client identity,
   captured headers, forwarding headers, rule facts), Pipeline.decide (engine.check),
   start_response, engine.observe, settle + record_for (the record) and Runtime.emit
   (redact, encode with orjson, queue on the sink; the sink thread is not run). The
   flows come from 1,000 client addresses in turn, a site's traffic (one client's flood
   would keep the rate rules firing on every request; benchmarks/rules.py measures
   scanner traffic). Records per second, best of --repeat, with the built-in defaults
   (no rules) and the shipped configs/proxylog.yaml (default rule pack, monitor mode),
   each capturing the default headers or all ten; then one more pass split per stage.
3. The plane-neutral pipeline alone: the same request as a `RequestHead` (what the fast
   plane builds from the bytes it read) through begin, decide, response_fields and finish.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mitmproxy import connection, http
from mitmproxy.test import tflow

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxylog.config import Config, RecordSpec, load_config
from proxylog.config.redact import RedactSpec
from proxylog.identity import new_request_id
from proxylog.mitm.flows import settle, start_flow, start_response
from proxylog.pipeline import Pipeline, RequestHead
from proxylog.pipeline.records import record_for
from proxylog.record import AccessRecord, encode_record
from proxylog.redact import Redactor
from proxylog.runtime import Runtime
from proxylog.testing import MemorySink, make_record

ROOT = Path(__file__).resolve().parent.parent
HEADERS = (
    ("Host", "shop.example.com"),
    ("User-Agent", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/126.0"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("Accept-Language", "en-US,en;q=0.9"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Referer", "https://shop.example.com/products?page=1&sort=price"),
    ("Cache-Control", "no-cache"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-Site", "same-origin"),
    ("Upgrade-Insecure-Requests", "1"),
)
CAPTURED = tuple(name.lower() for name, _ in HEADERS)
PATH = "/products/42"
QUERY = "page=2&sort=price&utm_source=newsletter"


def typical_record(**overrides: object) -> AccessRecord:
    """The record of the typical request: 10 captured headers (Host and User-Agent among
    them), 3 query parameters, no body."""
    fields: dict[str, object] = {
        "path": PATH,
        "query": QUERY,
        "domain": "shop.example.com",
        "user_agent": HEADERS[1][1],
        "request_headers": tuple((name.lower(), value) for name, value in HEADERS),
        "response_headers": (("content-type", "text/html; charset=utf-8"),),
    }
    return make_record(**{**fields, **overrides})


def per_call_us(
    call: Callable[[AccessRecord], object], records: list[AccessRecord], batches: int
) -> list[float]:
    """Mean CPU microseconds per call over each batch (one call per record of `records`).
    CPU time of this thread, not wall time: what a shared VM spends on other tenants is not
    counted. Distinct record objects, so the figure includes cold-cache effects."""
    for record in records:
        call(record)  # warm the Redactor's caches and re2's DFA
    means = []
    for _ in range(batches):
        start = time.thread_time_ns()
        for record in records:
            call(record)
        means.append((time.thread_time_ns() - start) / len(records) / 1000)
    return means


def variants(count: int, **fields: object) -> list[AccessRecord]:
    """`count` distinct records of one shape: request ids, timestamps and Referer pages vary."""
    base = typical_record(**fields)
    records = []
    for index in range(count):
        referer = f"https://shop.example.com/products?page={index % 50}&sort=price"
        headers = tuple((n, referer if n == "referer" else v) for n, v in base.request_headers)
        records.append(
            base._replace(request_headers=headers, request_id=new_request_id(), timestamp=time.time())
        )
    return records


def bench_redaction(repeat: int) -> None:
    redactor = Redactor(RedactSpec())
    plain = variants(1000)
    assert all(redactor(r) is r for r in plain), "the typical request should have nothing to redact"
    secrets = variants(
        1000,
        query="page=2&sort=price&token=f3a9c1d2e4b5a6978899",
        request_headers=(
            *((name.lower(), value) for name, value in HEADERS[:8]),
            ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl"),
            ("cookie", "_shop_session=abc123def456; locale=en"),
        ),
    )
    body = variants(
        1000,
        request_body={"user": {"email": "a@x.example", "password": "pw", "name": "Ann", "tags": ["x", "y"]}},
    )
    print("1. Redaction, default config, CPU µs per record (1,000 distinct records per batch)")
    print(f"   {'record':<62} {'median':>7} {'p99':>7}")
    for name, records in (
        ("typical: 10 headers, 3 query params, no body, nothing to hide", plain),
        ("with secrets: Authorization, Cookie, a token in the query", secrets),
        ("with a captured JSON body (5 keys, 2 of them secret)", body),
    ):
        means = per_call_us(redactor, records, batches=10 * repeat)
        p99 = statistics.quantiles(means, n=100)[98]
        print(f"   {name:<62} {statistics.median(means):>7.2f} {p99:>7.2f}")


def _clients(count: int) -> list[connection.Client]:
    """`count` client connections from distinct public addresses."""
    clients = []
    for index in range(count):
        client = tflow.tclient_conn()
        client.peername = (f"93.{184 + index // 256}.{index % 256}.34", 50_000 + index)
        clients.append(client)
    return clients


CLIENTS = 1000


def make_flows(count: int) -> list[http.HTTPFlow]:
    """Fresh flows of the typical request with a 200 response (the stages rewrite headers,
    so every timed run needs its own), from CLIENTS returning clients in turn: a site's
    traffic, not one client's flood (that is the rules benchmark's scanner workload).
    Connections are shared: the stages only read them."""
    server = tflow.tflow(resp=True).server_conn
    clients = _clients(CLIENTS)
    headers = [(name.encode(), value.encode()) for name, value in HEADERS]
    body = b"<html>" + b"x" * 2000 + b"</html>"
    flows = []
    now = time.time()
    for index in range(count):
        flow = http.HTTPFlow(clients[index % CLIENTS], server)
        flow.request = http.Request(
            "shop.example.com",
            80,
            b"GET",
            b"http",
            b"",
            f"{PATH}?{QUERY}".encode(),
            b"HTTP/1.1",
            http.Headers(headers),
            b"",
            None,
            now,
            now + 0.0001,
        )
        flow.response = http.Response(
            b"HTTP/1.1",
            200,
            b"OK",
            http.Headers([(b"Content-Type", b"text/html; charset=utf-8"), (b"Content-Length", b"2013")]),
            body,
            None,
            now + 0.002,
            now + 0.0021,
        )
        flows.append(flow)
    return flows


STAGES = ("begin", "decide", "start_response", "observe", "record", "redact", "encode")


def run_pipeline(runtime: Runtime, flows: list[http.HTTPFlow], split: dict[str, int] | None = None) -> int:
    """CPU nanoseconds to take every flow through the addon's stages in its order; with
    `split`, each stage's share is added to it instead: Runtime.emit is then taken apart
    into the redactor and the encoder (its O(1) queue append is left out)."""
    pipeline = Pipeline(runtime)
    spec = runtime.config.record
    engine = runtime.engine
    body_parser = runtime.body_parser
    clock = time.thread_time_ns
    start = clock()
    if split is None:
        for flow in flows:
            state = start_flow(flow, pipeline)
            pipeline.decide(state)
            start_response(flow, state, pipeline)
            settle(flow, state)
            pipeline.finish(state)
        return clock() - start
    for flow in flows:
        t0 = clock()
        state = start_flow(flow, pipeline)
        t1 = clock()
        pipeline.decide(state)
        t2 = clock()
        start_response(flow, state, pipeline)
        t3 = clock()
        settle(flow, state)
        if state.facts is not None:
            engine.observe(state.facts, state.status)
        t4 = clock()
        record = record_for(state, spec, body_parser=body_parser)
        t5 = clock()
        redacted = runtime.redactor(record)
        t6 = clock()
        encode_record(redacted, spec.schema)
        t7 = clock()
        times = (t0, t1, t2, t3, t4, t5, t6, t7)
        for index, stage in enumerate(STAGES):
            split[stage] += times[index + 1] - times[index]
    return clock() - start


def bench_pipeline(records: int, repeat: int) -> None:
    shipped = load_config(ROOT / "configs" / "proxylog.yaml")
    every_header = RecordSpec(headers=CAPTURED)
    print(
        f"\n2. Pipeline: begin → decide → start_response → observe → record → emit (redact, "
        f"encode, queue); {records:,} records, CPU time, best of {repeat}"
    )
    print(f"   {'config':<62} {'records/s':>10} {'µs/record':>10}")
    chunk = 2000
    rows = (
        ("built-in defaults (captures referer, content-type; no rules)", Config()),
        ("built-in defaults, all 10 headers captured", replace(Config(), record=every_header)),
        (f"configs/proxylog.yaml ({_rule_count(shipped)} rules, monitor)", shipped),
        (
            f"configs/proxylog.yaml ({_rule_count(shipped)} rules), all 10 headers captured",
            replace(shipped, record=every_header),
        ),
    )
    splits = []
    for name, config in rows:
        runtime = Runtime(config, sinks=[MemorySink()])
        run_pipeline(runtime, make_flows(chunk))  # warm-up: caches, re2's DFA, rule state
        best = float("inf")
        for _ in range(repeat):
            elapsed = 0
            done = 0
            while done < records:
                flows = make_flows(min(chunk, records - done))
                _fresh_queues(runtime, config)
                elapsed += run_pipeline(runtime, flows)
                done += len(flows)
            best = min(best, elapsed / 1e9)
        print(f"   {name:<62} {records / best:>10,.0f} {best / records * 1e6:>10.2f}")
        split = dict.fromkeys(STAGES, 0)
        for _ in range(records // chunk or 1):
            flows = make_flows(chunk)
            _fresh_queues(runtime, config)
            run_pipeline(runtime, flows, split)
        splits.append((name, split, (records // chunk or 1) * chunk))
    print("\n   per stage, µs/record (one more pass, a clock read around each stage)")
    print(f"   {'':<6}" + "".join(f"{stage:>18}" for stage in STAGES))
    for index, (_, split, count) in enumerate(splits, start=1):
        print(f"   {'row ' + str(index):<6}" + "".join(f"{split[s] / count / 1000:>18.2f}" for s in STAGES))


def make_heads(count: int) -> list[RequestHead]:
    """The typical request as a data plane hands it to the pipeline (what the fast plane
    builds from the bytes it read), from CLIENTS returning clients in turn."""
    now = time.time()
    fields = [(name.encode(), value.encode()) for name, value in HEADERS]
    target = f"{PATH}?{QUERY}".encode()
    size = len(target) + 20 + sum(len(n) + len(v) + 4 for n, v in fields)
    return [
        RequestHead(
            b"GET",
            target,
            b"HTTP/1.1",
            list(fields),
            (f"93.{184 + i // 256}.{i % 256}.34", 50_000),
            False,
            now,
            size,
        )
        for i in (index % CLIENTS for index in range(count))
    ]


RESPONSE = [(b"Content-Type", b"text/html; charset=utf-8"), (b"Content-Length", b"2013")]


def run_neutral(runtime: Runtime, heads: list[RequestHead]) -> int:
    """CPU nanoseconds to take every head through the pipeline as the fast plane does:
    begin, decide, response_fields, the plane's counts, finish (record, redact, encode, queue)."""
    pipeline = Pipeline(runtime)
    clock = time.thread_time_ns
    start = clock()
    for head in heads:
        ex = pipeline.begin(head)
        pipeline.decide(ex)
        ex.request_ended = ex.response_started = head.started
        pipeline.response_fields(ex, RESPONSE)
        ex.status, ex.response_head_bytes, ex.response_body_bytes = 200, 120, 2013
        pipeline.finish(ex)
    return clock() - start


def bench_neutral(records: int, repeat: int) -> None:
    shipped = load_config(ROOT / "configs" / "proxylog.yaml")
    print(
        f"\n3. The plane-neutral pipeline alone (what the fast plane drives): begin → decide → "
        f"response_fields → finish; {records:,} records, CPU time, best of {repeat}"
    )
    print(f"   {'config':<62} {'records/s':>10} {'µs/record':>10}")
    chunk = 2000
    for name, config in (
        ("built-in defaults (no rules)", Config()),
        (f"configs/proxylog.yaml ({_rule_count(shipped)} rules, monitor)", shipped),
    ):
        runtime = Runtime(config, sinks=[MemorySink()])
        run_neutral(runtime, make_heads(chunk))
        best = float("inf")
        for _ in range(repeat):
            elapsed = done = 0
            while done < records:
                heads = make_heads(min(chunk, records - done))
                _fresh_queues(runtime, config)
                elapsed += run_neutral(runtime, heads)
                done += len(heads)
            best = min(best, elapsed / 1e9)
        print(f"   {name:<62} {records / best:>10,.0f} {best / records * 1e6:>10.2f}")


def _fresh_queues(runtime: Runtime, config: Config) -> None:
    """Empty sink queues for the next chunk, off the clock: a full queue takes a cheaper
    (dropping) path. The workers of a throwaway Runtime; the redactor and engine stay warm."""
    runtime.workers = Runtime(config, sinks=[MemorySink()]).workers


def _rule_count(config: Config) -> int:
    rules = getattr(config.rules, "rules", ())
    return len(rules)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: the current one)")
    args = parser.parse_args()
    cpu = args.cpu if args.cpu is not None else os.sched_getaffinity(0).pop()
    os.sched_setaffinity(0, {cpu})
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"python {sys.version.split()[0]}, pinned to CPU {cpu}, load average {os.getloadavg()[0]:.2f}\n")
    bench_redaction(args.repeat)
    bench_pipeline(args.records, args.repeat)
    bench_neutral(args.records, args.repeat)


if __name__ == "__main__":
    main()
