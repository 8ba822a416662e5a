"""Detection and false-positive tables for the default rule pack, from the public corpora.

    .venv/bin/python benchmarks/detection.py [--pack configs/rules/default.yaml] [--markdown]

1. CrowdSec hub scenario tests, replayed per (test, client IP) with the original log times:
   per category, how many of CrowdSec's expected bans the pack reproduces (banned, or blocked
   at request time), how many it only tags, and which rules did it.
2. The hub's scenario negatives and app-whitelist traffic: must show no ban.
3. The real Apache log (10,000 requests, 1,753 clients, 2015), replayed by time: every ban,
   every intel block, and what the pack tags.
4. Single requests from independent corpora (fuzzdb, PayloadsAllTheThings, crawler user
   agents): the share tagged on sight, i.e. by one request from a fresh client.
The assertions live in tests/test_corpora.py; this prints the full tables.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxylog.config.reader import Node
from proxylog.config.rule_specs import RulesSpec
from proxylog.config.rules import parse_rules
from proxylog.record import format_timestamp
from proxylog.rules import RuleEngine
from proxylog.rules.sources import facts_from_corpus
from proxylog.testing import FakeClock
from tests.rules.test_corpora import (
    CHEF_CLIENT,
    DATA,
    DEFAULT_PACK,
    REAL_LOG,
    evaluate,
    load_hub,
    real_traffic,
)

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


class Table:
    """Rows printed as aligned text or as a Markdown table."""

    def __init__(self, title: str, headers: list[str], markdown: bool) -> None:
        self.title, self.headers, self.markdown = title, headers, markdown
        self.rows: list[list[str]] = []

    def add(self, *cells: object) -> None:
        self.rows.append([f"{c:,}" if isinstance(c, int) else str(c) for c in cells])

    def print(self) -> None:
        print(f"\n{self.title}\n")
        if self.markdown:
            print("| " + " | ".join(self.headers) + " |")
            print("|" + "|".join("---" for _ in self.headers) + "|")
            for row in self.rows:
                print("| " + " | ".join(row) + " |")
            return
        widths = [max([len(h)] + [len(r[i]) for r in self.rows]) for i, h in enumerate(self.headers)]
        print("  ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=True)))
        for row in self.rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def hub_tables(spec: RulesSpec, markdown: bool) -> None:
    outcomes = evaluate(load_hub(), spec)
    attacks = [o for o in outcomes if o.group.label == "attack"]
    per: dict[str, list[Any]] = collections.defaultdict(list)
    for o in attacks:
        per[o.group.category].append(o)
    table = Table(
        "CrowdSec hub scenario tests: expected bans (one per attacking test/IP group) reproduced by the pack",
        ["category", "expected", "banned", "blocked", "tagged only", "missed", "reproduced", "by rules"],
        markdown,
    )
    totals = collections.Counter[str]()
    for category, group in sorted(per.items(), key=lambda kv: -len(kv[1])):
        counts = collections.Counter(o.verdict for o in group)
        totals.update(counts)
        rules = collections.Counter(rule for o in group for rule in o.ban_rules)
        stopped = counts["banned"] + counts["blocked"]
        table.add(
            category,
            len(group),
            counts["banned"],
            counts["blocked"],
            counts["tagged"],
            counts["missed"],
            f"{stopped / len(group):.0%}",
            ", ".join(f"{r} ({n})" for r, n in rules.most_common()) or "-",
        )
    stopped = totals["banned"] + totals["blocked"]
    table.add(
        "all",
        len(attacks),
        totals["banned"],
        totals["blocked"],
        totals["tagged"],
        totals["missed"],
        f"{stopped / len(attacks):.0%}",
        "",
    )
    table.print()

    benign = [o for o in outcomes if o.group.label == "benign"]
    table = Table(
        "Hub traffic that must not be banned (scenario negatives, app whitelists)",
        ["test", "client", "requests", "verdict", "tags"],
        markdown,
    )
    for o in sorted(benign, key=lambda o: (o.group.category != "app-whitelist", o.group.test)):
        tags = ", ".join(f"{t} ({n})" for t, n in o.report.tagged.most_common()) or "-"
        table.add(o.group.test, o.group.client_ip, len(o.group.entries), o.verdict, tags)
    table.print()
    banned = sum(1 for o in benign if o.verdict in ("banned", "blocked"))
    print(f"\n{banned} of {len(benign)} benign groups banned or blocked")


def real_log_tables(spec: RulesSpec, markdown: bool) -> None:
    docs = [orjson.loads(line) for line in REAL_LOG.read_bytes().splitlines()]
    by_ip: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for doc in docs:
        by_ip[doc["client_ip"]].append(doc)
    report = real_traffic(spec)
    bans = [e for e in report.events if e.kind == "ban"]
    table = Table(
        f"Real Apache log ({len(docs):,} requests, {len(by_ip):,} clients): bans",
        ["client", "rule", "when", "requests", "404s", "reference flags", "what it did"],
        markdown,
    )
    for ban in bans:
        lines = by_ip.get(ban.key, [])
        flags = collections.Counter(f for d in lines for f in d.get("reference_flags") or [])
        paths = sorted({d["path"] for d in lines if d["status"] == 404})[:3]
        table.add(
            ban.key,
            ban.rule,
            format_timestamp(ban.ts)[:19] + "Z",
            len(lines),
            sum(1 for d in lines if d["status"] == 404),
            ", ".join(f"{f} ({n})" for f, n in flags.items()) or "-",
            " ".join(paths),
        )
    table.print()
    chef = by_ip.get(CHEF_CLIENT, [])
    chef_banned = any(b.key == CHEF_CLIENT for b in bans)
    not_found = sum(d["status"] == 404 for d in chef)
    verdict = "YES" if chef_banned else "no"
    print(f"\nChef client {CHEF_CLIENT}: {len(chef)} requests, {not_found} of them 404, banned: {verdict}")

    intel_only = RuleEngine(RulesSpec(intel=spec.intel))
    title = "Real log clients on intel lists (blocked in enforce mode)"
    intel = Table(title, ["list", "clients", "requests"], markdown)
    hits: dict[str, set[str]] = collections.defaultdict(set)
    requests = collections.Counter[str]()
    for doc in docs:
        verdict = intel_only.check(facts_from_corpus(doc).facts)
        for hit in verdict.rules:
            if hit.id in {i.name for i in spec.intel}:
                hits[hit.id].add(doc["client_ip"])
                requests[hit.id] += 1
    for name in (i.name for i in spec.intel):
        intel.add(name, len(hits[name]), requests[name])
    intel.print()

    tags = Table("Real log: what the pack tags", ["tag", "requests"], markdown)
    for tag, count in report.tagged.most_common():
        tags.add(tag, count)
    tags.print()
    print(
        f"\n{report.requests:,} requests: {report.tagged_requests:,} tagged, {report.would_block:,} would be "
        f"blocked, {len(bans)} bans of {len({b.key for b in bans})} clients"
    )


def _tagged_on_sight(
    spec: RulesSpec, docs: list[dict[str, Any]], status: int | None
) -> list[tuple[str, set[str]]]:
    """Each request from its own fresh client; the tags it gets at request and response time."""
    engine = RuleEngine(spec, FakeClock())
    out = []
    for n, doc in enumerate(docs):
        facts = facts_from_corpus({**doc, "client_ip": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"}).facts
        tags = set(engine.check(facts).tags) | set(engine.observe(facts, status).tags)
        out.append((doc["category"], tags))
    return out


def single_request_tables(spec: RulesSpec, markdown: bool) -> None:
    payloads = DATA / "payloadsallthethings" / "requests.jsonl"
    corpora = [
        ("fuzzdb", DATA / "fuzzdb" / "requests.jsonl", 404, "path"),
        ("PayloadsAllTheThings", payloads, None, "path"),
        ("PayloadsAllTheThings, fully encoded", payloads, None, "path_fully_encoded"),
        ("crawler-user-agents", DATA / "user-agents" / "requests.jsonl", None, "path"),
    ]
    table = Table(
        "Single requests from independent corpora, each from a fresh client: share tagged on sight",
        ["corpus", "category", "label", "requests", "tagged", "share", "top tags"],
        markdown,
    )
    for name, path, status, field in corpora:
        if not path.is_file():
            continue
        docs = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        docs = [{**d, "path": d.get(field) or d["path"]} for d in docs if not d.get("duplicate_of_earlier")]
        if name != "crawler-user-agents":  # these corpora send no User-Agent: give them a browser's
            docs = [{**d, "headers": {"user-agent": BROWSER, **(d.get("headers") or {})}} for d in docs]
        results = _tagged_on_sight(spec, docs, status)
        groups: dict[tuple[str, str], list[set[str]]] = collections.defaultdict(list)
        for doc, (category, tags) in zip(docs, results, strict=True):
            groups[(category, doc["label"])].append(tags)
        for (category, label), tag_sets in sorted(groups.items(), key=lambda kv: (kv[0][1], -len(kv[1]))):
            tagged = sum(1 for t in tag_sets if t)
            top = collections.Counter(t for tags in tag_sets for t in tags).most_common(3)
            table.add(
                name,
                category,
                label,
                len(tag_sets),
                tagged,
                f"{tagged / len(tag_sets):.0%}",
                ", ".join(f"{t} ({n})" for t, n in top) or "-",
            )
    table.print()
    print("(fuzzdb requests are answered 404, as recon probes of files that do not exist would be;")
    print("the path and payload corpora get a browser User-Agent, so only what they ask for is judged)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pack", default=str(DEFAULT_PACK), help="rule pack to evaluate")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args()
    spec = parse_rules(Node([{"include": args.pack}], "rules"), None, None)
    print(f"rule pack: {args.pack} ({len(spec.rules)} rules, {len(spec.intel)} intel lists); data: {DATA}")
    hub_tables(spec, args.markdown)
    real_log_tables(spec, args.markdown)
    single_request_tables(spec, args.markdown)


if __name__ == "__main__":
    main()
