"""Request inspection: detection and false positives on the public corpora, and its CPU cost.

    .venv/bin/python benchmarks/inspection.py [--split test|dev|all] [--markdown] [--repeat 3]
                                              [--skip-cost | --skip-tables]

Every corpus line is assigned to a split by a hash of its payload (both encodings of a
PayloadsAllTheThings payload land together): `dev` (40%) is what the catalog was tuned on,
`test` (60%) is held out and is what BENCHMARKS.md reports. Each request comes from a fresh
client (a browser User-Agent added where the corpus has none), so a share is "tagged on
sight" by one request. Compared: the default pack (any tag), and an `inspect:` rule at
paranoia 1 and 2 (threshold 5). Cost: µs per request of `check` with only the inspect rule,
minus `check` with a rule that never matches, on the real Apache log (no bodies) and on
8 KB benign form bodies (`check_body`), plus p99 on adversarial 8 KB bodies.
"""

# ruff: noqa: E402  (the path fix below must run before any other import)
from __future__ import annotations

import os
import sys

# This file shadows the standard library's `inspect` for anything imported from its folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import collections
import gc
import hashlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxylog.config.reader import Node
from proxylog.config.rule_specs import RulesSpec
from proxylog.config.rules import parse_rules
from proxylog.rules import RequestFacts, RuleEngine
from proxylog.rules.inspect import INFO
from proxylog.rules.sources import facts_from_corpus
from proxylog.testing import FakeClock

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
PACK = ROOT / "configs" / "rules" / "default.yaml"
FORMS = ROOT / "tests" / "data" / "inspect" / "benign_forms.jsonl"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def split_of(doc: dict[str, Any]) -> str:
    """`dev` or `test`, stable across runs and machines."""
    key = str(doc.get("payload") or doc.get("source") or doc.get("path"))
    return "dev" if hashlib.sha1(key.encode(), usedforsecurity=False).digest()[0] % 10 < 4 else "test"


def inspect_spec(paranoia: int) -> RulesSpec:
    rule = {"id": "inspect", "when": {"inspect": {"paranoia": paranoia}}, "action": "block"}
    return parse_rules(Node([rule], "rules"), None, None)


def pack_spec(*packs: Path) -> RulesSpec:
    includes = [{"include": str(p)} for p in (PACK, *packs)]
    return parse_rules(Node(includes, "rules"), None, None, base_dir=PACK.parent)


def load(
    path: Path, field: str = "path", keep: Callable[[dict[str, Any]], bool] = lambda d: True
) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    docs = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    docs = [
        {**d, "path": d.get(field) or d["path"]}
        for d in docs
        if keep(d) and not d.get("duplicate_of_earlier")
    ]
    for d in docs:
        headers = {str(k).lower(): v for k, v in (d.get("headers") or {}).items()}
        headers.setdefault("user-agent", BROWSER)
        d["headers"] = headers
    return docs


def corpora() -> tuple[list[tuple[str, list[dict[str, Any]]]], list[tuple[str, list[dict[str, Any]]]]]:
    pat = DATA / "payloadsallthethings" / "requests.jsonl"
    hub = DATA / "crowdsec-hub"
    attacks: list[tuple[str, list[dict[str, Any]]]] = []
    by_cat: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for d in load(pat):
        by_cat[d["category"]].append(d)
    for cat in sorted(by_cat):
        attacks.append((f"PayloadsAllTheThings {cat}", by_cat[cat]))
    attacks.append(("PayloadsAllTheThings, all, fully encoded", load(pat, "path_fully_encoded")))
    attacks.append(
        (
            "CrowdSec AppSec cases (403 expected)",
            load(hub / "appsec_requests.jsonl", keep=lambda d: d["label"] == "attack"),
        )
    )
    single = {"sqli", "xss", "traversal"}
    attacks.append(
        (
            "CrowdSec scenario tests: sqli, xss, traversal lines",
            load(hub / "requests.jsonl", keep=lambda d: d["category"] in single),
        )
    )
    attacks.append(("fuzzdb recon probes (paths, not payloads)", load(DATA / "fuzzdb" / "requests.jsonl")))
    benign = [
        ("real Apache log (2015)", load(DATA / "real-access-logs" / "elastic-apache" / "requests.jsonl")),
        (
            "crawler and browser user agents",
            load(DATA / "user-agents" / "requests.jsonl", keep=lambda d: d["label"] == "benign"),
        ),
        (
            "CrowdSec AppSec benign cases + app whitelists",
            load(hub / "appsec_requests.jsonl", keep=lambda d: d["label"] == "benign")
            + load(hub / "requests.jsonl", keep=lambda d: d["label"] == "benign"),
        ),
        ("proxylog's benign form and JSON posts (written for tuning)", load(FORMS)),
    ]
    return attacks, benign


def on_sight(
    spec: RulesSpec, docs: list[dict[str, Any]], attack_only: bool
) -> tuple[int, collections.Counter[str]]:
    """How many requests are tagged, each from a fresh client; and the families/ids seen."""
    engine = RuleEngine(spec, FakeClock())
    tagged = 0
    seen: collections.Counter[str] = collections.Counter()
    for n, doc in enumerate(docs):
        facts = facts_from_corpus({**doc, "client_ip": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"}).facts
        verdict = engine.check(facts)
        tags = set(verdict.tags) | set(engine.observe(facts, doc.get("status")).tags)
        hits = [h for h in verdict.rules if h.score is not None]
        if attack_only:
            tags = {t for t in tags if t.startswith("attack-")}
        if tags:
            tagged += 1
            for hit in hits:
                seen.update(hit.matched)
    return tagged, seen


def tables(split: str, markdown: bool) -> None:
    attacks, benign = corpora()
    specs = [
        ("default pack", pack_spec(), False),
        ("inspect PL1", inspect_spec(1), True),
        ("inspect PL2", inspect_spec(2), True),
        ("default + inspect.yaml", pack_spec(PACK.parent / "inspect.yaml"), False),
    ]
    for title, groups in (("Attacks tagged on sight", attacks), ("Benign requests tagged", benign)):
        rows = []
        ids: collections.Counter[str] = collections.Counter()
        for name, docs in groups:
            docs = [d for d in docs if split == "all" or split_of(d) == split]
            if not docs:
                continue
            cells = [name, f"{len(docs):,}"]
            for label, spec, attack_only in specs:
                count, seen = on_sight(spec, docs, attack_only)
                if label == "inspect PL1":
                    ids.update(seen)
                cells.append(
                    f"{count / len(docs):.1%}"
                    + (f" ({count})" if count and title.startswith("Benign") else "")
                )
            rows.append(cells)
        print(f"\n{title} ({split} split)\n")
        header = ["corpus", "requests", *(label for label, _, _ in specs)]
        if markdown:
            print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
            for row in rows:
                print("| " + " | ".join(row) + " |")
        else:
            for row in [header, *rows]:
                print("  ".join(c.ljust(12) for c in row))
        if ids:
            top = ", ".join(f"{i} ({INFO[int(i)][0]}) x{c}" for i, c in ids.most_common(12))
            print(f"\nPL1 rule ids most often in the tagged requests: {top}")


def _facts(doc: dict[str, Any], n: int) -> RequestFacts:
    return facts_from_corpus({**doc, "client_ip": f"10.0.{n >> 8 & 255}.{n & 255}"}).facts


def _time(engine: RuleEngine, run: Callable[[RuleEngine], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run(engine)
        best = min(best, time.perf_counter() - start)
    return best


def cost(repeat: int) -> None:
    log = load(DATA / "real-access-logs" / "elastic-apache" / "requests.jsonl")[:5000]
    facts = [_facts(d, n) for n, d in enumerate(log)]
    never = parse_rules(
        Node([{"id": "never", "when": {"method": "TRACE"}, "action": "tag"}], "rules"), None, None
    )
    words = ["name", "email", "address", "city", "notes", "comment", "quantity", "price", "colour", "size"]
    form = "&".join(
        f"{words[i % 10]}{i}=Some+ordinary+text+value+number+{i}%2C+with+punctuation." for i in range(160)
    )
    body = form.encode()[:8192]
    hostile = [
        b"a=" + b"%25" * 2700,
        b"a=" + b"&amp;" * 1630,
        b"a=" + b"/*" * 4090,
        b"a&" * 4096,
        b"q=" + b"'" * 4000 + b" or " + b"(" * 4000,
        b'{"a":' * 1000 + b"1" + b"}" * 1000,
    ]
    form_facts = RequestFacts(0, "10.9.9.9", "POST", "/orders", None, BROWSER, frozenset(), "shop.example")
    gc.collect()
    gc.freeze()  # the corpora this script loaded are no proxy's heap: no GC pass over them in p99
    print(f"\nCPU cost of inspection (best of {repeat})\n")
    for paranoia in (1, 2):
        spec = inspect_spec(paranoia)
        base = _time(RuleEngine(never, FakeClock()), lambda e: [e.check(f) for f in facts], repeat)
        full = _time(RuleEngine(spec, FakeClock()), lambda e: [e.check(f) for f in facts], repeat)
        per = 1e6 / len(facts)
        print(
            f"PL{paranoia}: real log, no body: {(full - base) * per:.1f} µs per request "
            f"(check {full * per:.1f} µs with the inspect rule, {base * per:.1f} µs without)"
        )
        engine = RuleEngine(spec, FakeClock())
        ct = "application/x-www-form-urlencoded"
        n = 300
        t = _time(
            engine, lambda e, n=n, ct=ct: [e.check_body(form_facts, body, ct) for _ in range(n)], repeat
        )
        print(f"PL{paranoia}: 8 KB benign form body (160 fields), check_body: {t / n * 1e6:.1f} µs")
        samples = []
        for payload in hostile:
            for _ in range(20):
                start = time.perf_counter()
                engine.check_body(
                    form_facts, payload[:8192], "application/json" if payload[:1] == b"{" else ct
                )
                samples.append(time.perf_counter() - start)
        samples.sort()
        print(
            f"PL{paranoia}: adversarial 8 KB bodies: median {statistics.median(samples) * 1e6:.0f} µs, "
            f"p99 {samples[int(len(samples) * 0.99) - 1] * 1e6:.0f} µs, max {samples[-1] * 1e6:.0f} µs"
        )
    start = time.perf_counter()
    for _ in range(200_000):
        sum(range(100))
    print(f"machine speed: sum(range(100)) {(time.perf_counter() - start) / 200_000 * 1e9:.0f} ns")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=["test", "dev", "all"], default="test")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-tables", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not args.skip_tables:
        tables(args.split, args.markdown)
    if not args.skip_cost:
        cost(args.repeat)


if __name__ == "__main__":
    main()
