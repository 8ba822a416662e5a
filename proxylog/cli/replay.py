"""`proxylog replay`: historical records or access logs through the rules, and what they did."""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

import orjson

from proxylog.config import Config, ConfigError, load_config
from proxylog.config.reader import Node
from proxylog.config.rule_specs import RulesSpec
from proxylog.config.rules import parse_rules
from proxylog.identity import TrustedProxies
from proxylog.record import Mode, format_timestamp
from proxylog.redact import Redactor
from proxylog.redact.keys import MASK, fully_decoded
from proxylog.rules.inspect.explain import PART_NAMES, Matched
from proxylog.rules.replay import ReplayReport, duration, replay
from proxylog.rules.sources import PARSERS, Entry, Skipped, open_text, read_entries
from proxylog.rules.tuning import TuningReport, tune
from proxylog.rules.types import RuleEvent

EPILOG = """\
examples:
  proxylog replay /var/log/proxylog/access.jsonl --config /etc/proxylog/proxylog.yaml
  proxylog replay /var/log/nginx/access.log.1 --rules configs/rules/default.yaml
  zcat access.log.*.gz | proxylog replay - --rules my-pack.yaml --events bans --json

Input: proxylog's JSONL records (nested or flat), nginx/Apache common or combined log lines
(.gz is read directly; - is stdin). Requests are sorted by timestamp and each timestamp is
the engine's clock. In monitor mode (the default unless the config or --enforce says
otherwise) every request is observed; in enforce mode requests a ban would block are not.

Tuning inspection: --inspect-paranoia N inspects every request at the paranoia level of the
first rule with `when: {inspect: ...}` and at N, and prints per family the requests that
reach the threshold at each, how many N adds (or drops), and the top 5 values matched by the
rules only the higher level has, redacted as records are (the config's `redact:`), e.g.
  proxylog replay access.jsonl --config proxylog.yaml --inspect-paranoia 2 --events none
"""


def register(commands: Any) -> None:
    """Add ``proxylog replay`` to the `proxylog` subcommands."""
    parser = commands.add_parser(
        "replay",
        help="run historical records or access logs through the rules",
        description="Replay historical requests through the rules and print what would have "
        "been tagged, blocked or banned, and when.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", metavar="FILE", nargs="+", help="JSONL records or access logs (- for stdin)")
    parser.add_argument(
        "--config", "-c", metavar="FILE", help="proxylog config whose rules, intel and allowlist apply"
    )
    parser.add_argument(
        "--rules", metavar="PACK", action="append", default=[], help="a rule pack file to add (repeatable)"
    )
    parser.add_argument(
        "--format", choices=sorted(PARSERS), default="auto", help="input format (default: auto)"
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--enforce", action="store_const", const="enforce", dest="mode", help="simulate enforce mode"
    )
    modes.add_argument(
        "--monitor", action="store_const", const="monitor", dest="mode", help="simulate monitor mode"
    )
    parser.add_argument(
        "--events", choices=("all", "bans", "none"), default="all", help="which events to list (default: all)"
    )
    parser.add_argument("--no-sort", action="store_true", help="replay in file order (input already sorted)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="NDJSON: one line per event (an inspection line with --inspect-paranoia), then a summary",
    )
    parser.add_argument(
        "--inspect-paranoia",
        metavar="N",
        type=int,
        choices=range(1, 5),
        help="also compare inspection at the configured paranoia level with level N (1-4): "
        "per-family hits at both and the top values N adds, redacted",
    )
    parser.set_defaults(func=cmd_replay)


def _spec(args: argparse.Namespace) -> tuple[RulesSpec, Config]:
    config = load_config(args.config) if args.config else Config()
    if not args.rules:
        return config.rules, config
    packs = parse_rules(Node([{"include": pack} for pack in args.rules], "--rules"), None, None)
    base = config.rules
    clash = {r.id for r in base.rules} & {r.id for r in packs.rules}
    clash |= {i.name for i in base.intel} & {i.name for i in packs.intel}
    if clash:
        raise ConfigError("--rules", f"{', '.join(sorted(clash))}: already in {args.config}")
    spec = RulesSpec(base.rules + packs.rules, base.intel + packs.intel, base.allow, base.packs + packs.packs)
    return spec, config


def cmd_replay(args: argparse.Namespace) -> int:
    """Run ``proxylog replay``; returns the exit status (ConfigError propagates to the CLI)."""
    try:
        return _replay_command(args)
    except BrokenPipeError:  # `proxylog replay ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


class Progress:
    """A one-line progress bar on `stream` (stderr) when it is a terminal, silent otherwise;
    redrawn at most ten times a second, so a large log costs nothing extra."""

    WIDTH = 30

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self._clock = clock
        self._drawn = 0.0

    def each(self, items: Iterable[Entry], label: str, total: int | None = None) -> Iterator[Entry]:
        """`items`, drawing `label` with a count (and a bar when `total` is known) as they pass."""
        if not self.enabled:
            yield from items
            return
        done = 0
        for item in items:
            done += 1
            if done & 1023 == 0:
                self._draw(label, done, total)
            yield item
        self._draw(label, done, total, force=True)
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, label: str, done: int, total: int | None, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        if total:
            filled = int(self.WIDTH * done / total)
            text = f"{label} [{'#' * filled:<{self.WIDTH}}] {done / total:6.1%} {done:,}/{total:,}"
        else:
            text = f"{label} {done:,} lines"
        self.stream.write(f"\r\x1b[K{text}")
        self.stream.flush()


def _replay_command(args: argparse.Namespace) -> int:
    spec, config = _spec(args)
    mode = Mode(args.mode or config.mode)
    out: TextIO = sys.stdout
    if not spec.rules and not spec.intel and args.inspect_paranoia is None:
        print("proxylog replay: no rules to replay: pass --config FILE or --rules PACK", file=sys.stderr)
        return 2
    skipped = Skipped()
    entries: list[Entry] = []
    progress = Progress(sys.stderr)
    for path in args.files:
        try:
            with open_text(path) as f:
                entries.extend(progress.each(read_entries(f, args.format, skipped), f"reading {path}"))
        except OSError as e:
            print(f"proxylog replay: cannot read {path}: {e}", file=sys.stderr)
            return 1
    show = _shown(args.events)

    trusted = TrustedProxies(config.trusted_proxies).is_trusted

    if not args.no_sort:
        entries.sort(key=lambda e: e.facts.ts)

    def run(on_event: Callable[[RuleEvent], None]) -> ReplayReport:
        ticking = progress.each(entries, "replaying", len(entries))
        return replay(ticking, spec, mode=mode, sort=False, on_event=on_event, trusted=trusted)

    tuning = None
    if args.inspect_paranoia is not None:
        tuning = tune(entries, spec, args.inspect_paranoia, _shower(Redactor(config.redact)))
    if args.json:
        report = run(lambda e: _json_event(out, e, show))
        if tuning is not None:
            _json_tuning(out, tuning)
        _json_summary(out, report, spec, mode, skipped)
        return 0
    _print_header(out, args.files, entries, spec, mode, skipped)
    if show:
        print(f"\n{'WHEN':<27} {'EVENT':<6} {'RULE':<20} {'KEY':<24} DETAIL", file=out)
    report = run(lambda e: _text_event(out, e, show))
    _print_summary(out, report, spec, mode)
    if tuning is not None:
        _print_tuning(out, tuning)
    return 0


def _shown(which: str) -> frozenset[str]:
    return {
        "all": frozenset({"rule_fired", "ban", "unban"}),
        "bans": frozenset({"ban", "unban"}),
        "none": frozenset(),
    }[which]


def _when(ts: float) -> str:
    return format_timestamp(ts)[:19] + "Z" if ts == int(ts) else format_timestamp(ts)


_EVENT_LABELS = {"rule_fired": "fired", "ban": "BAN", "unban": "unban"}


def _text_event(out: TextIO, event: RuleEvent, show: frozenset[str]) -> None:
    if event.kind not in show:
        return
    if event.kind == "ban" and event.until is not None:
        detail = f"{event.count} ≥ {event.threshold}, banned {duration(event.until - event.ts)}"
        if not event.threshold:
            detail = f"banned {duration(event.until - event.ts)}"
    elif event.kind == "rule_fired":
        detail = f"{event.count} ≥ {event.threshold}"
    else:
        detail = "ban expired" if event.until is not None and event.until <= event.ts else "lifted"
    print(
        f"{_when(event.ts):<27} {_EVENT_LABELS[event.kind]:<6} {event.rule:<20} {event.key:<24} {detail}",
        file=out,
    )


def _print_header(
    out: TextIO, files: list[str], entries: list[Entry], spec: RulesSpec, mode: str, skipped: Skipped
) -> None:
    span = ""
    if entries:
        stamps = [e.facts.ts for e in entries]
        span = f", {_when(min(stamps))} → {_when(max(stamps))}"
    print(f"replaying {len(entries):,} requests from {', '.join(files)}{span}", file=out)
    line = f"  {len(spec.rules)} rules, {len(spec.intel)} intel lists, {mode} mode"
    if skipped.count:
        line += f"; skipped {skipped.count:,} lines that are not requests ({skipped.first})"
    print(line, file=out)


_RULE_ROW = "{:<20} {:<6} {:<16} {:>8} {:>7} {:>6} {:>7}"


def _print_summary(out: TextIO, report: ReplayReport, spec: RulesSpec, mode: str) -> None:
    fired: dict[str, set[str]] = collections.defaultdict(set)
    banned: dict[str, set[str]] = collections.defaultdict(set)
    for event in report.events:
        if event.kind == "rule_fired":
            fired[event.rule].add(event.key)
        elif event.kind == "ban":
            banned[event.rule].add(event.key)
    print(
        "\n" + _RULE_ROW.format("RULE", "ACTION", "THRESHOLD", "MATCHED", "FIRED", "KEYS", "BANNED"), file=out
    )
    for rule in spec.rules:
        stats = report.rules.get(rule.id, {})
        limit = f"{rule.threshold}/{duration(rule.window)}"
        counts = (stats.get("matched", 0), stats.get("fired", 0), len(fired[rule.id]), len(banned[rule.id]))
        print(_RULE_ROW.format(rule.id, rule.action, limit, *(f"{n:,}" for n in counts)), file=out)
    if report.tagged:
        print(f"\n{'TAG':<28} {'REQUESTS':>9}", file=out)
        for tag, count in report.tagged.most_common():
            print(f"{tag:<28} {count:>9,}", file=out)
    bans = [e for e in report.events if e.kind == "ban"]
    clients = len({e.key for e in bans})
    print(
        f"\n{report.requests:,} requests from {len(report.clients):,} clients: "
        f"{report.tagged_requests:,} tagged, "
        f"{report.would_block:,} would be blocked, {len(bans):,} bans of {clients:,} keys",
        file=out,
    )
    if mode == "monitor" and report.would_block:
        print("(monitor mode: nothing was blocked; --enforce simulates blocking)", file=out)


def _json_event(out: TextIO, event: RuleEvent, show: frozenset[str]) -> None:
    if event.kind not in show:
        return
    doc: dict[str, object] = {
        "type": "event",
        "event": event.kind,
        "@timestamp": format_timestamp(event.ts),
        "rule": event.rule,
        "key": event.key,
        "count": event.count,
        "threshold": event.threshold,
    }
    if event.kind == "ban" and event.until is not None:
        doc["until"] = format_timestamp(event.until)
        doc["ttl_s"] = round(float(event.until) - event.ts, 3)
    out.write(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE).decode())


def _json_summary(out: TextIO, report: ReplayReport, spec: RulesSpec, mode: str, skipped: Skipped) -> None:
    bans = [e for e in report.events if e.kind == "ban"]
    doc = {
        "type": "summary",
        "mode": mode,
        "requests": report.requests,
        "clients": len(report.clients),
        "skipped_lines": skipped.count,
        "from": format_timestamp(report.first_ts) if report.first_ts is not None else None,
        "to": format_timestamp(report.last_ts) if report.last_ts is not None else None,
        "tagged": report.tagged_requests,
        "would_block": report.would_block,
        "blocked": report.blocked,
        "bans": len(bans),
        "banned_keys": sorted({e.key for e in bans}),
        "tags": dict(report.tagged.most_common()),
        "rules": report.rules,
    }
    out.write(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE).decode())


VALUE_WIDTH = 60
_LEAD = 12  # characters shown before a match


def _shower(redactor: Redactor) -> Callable[[Matched], str]:
    """A match as printed: ``part:name value``. The value is redacted as a record's field
    would be, URL-decoded, as sent and transformed: the first of them redaction changes is
    shown redacted; if none changes, the transformed value around the match. At most
    `VALUE_WIDTH` characters; fails closed."""
    text = redactor.text

    def redacted(match: Matched, value: str) -> str:
        if match.part == "a" and match.name:
            prefix = f"{match.name}="
            out = text.pairs(prefix + value)
            out = out[len(prefix) :] if out.startswith(prefix) else out
        elif match.part == "c":
            prefix = f"{match.name}="
            found = text.header("cookie", prefix + value)
            out = MASK if found is None else found.removeprefix(prefix)
        elif match.part == "h" and match.name:
            out = text.header(match.name, value) or MASK
        else:
            out = value
        return text.scan(out)

    def show(match: Matched) -> str:
        where = PART_NAMES[match.part] + (f":{match.name}" if match.name else "")
        try:
            for value in (fully_decoded(match.raw), match.raw, match.form):
                cleaned = redacted(match, value)
                if cleaned != value:
                    return f"{where} {_printable(cleaned)[:VALUE_WIDTH]}"
            start = max(0, match.start - _LEAD)
            window = match.form[start : start + VALUE_WIDTH]
        except Exception:
            return f"{where} {MASK}"
        cut = "…" if start else ""
        return f"{where} {cut}{_printable(window)}{'…' if start + VALUE_WIDTH < len(match.form) else ''}"

    return show


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "⏎" if c == "\ue000" else "?" for c in text)


def _print_tuning(out: TextIO, tuning: TuningReport) -> None:
    base = f"paranoia {tuning.base}" if tuning.rule else "no inspecting rule"
    print(
        f"\ninspection: {base}{f' ({tuning.rule})' if tuning.rule else ''} vs paranoia {tuning.other}, "
        f"threshold {tuning.threshold}: {tuning.base_hits:,} → {tuning.other_hits:,} of "
        f"{tuning.requests:,} requests",
        file=out,
    )
    change = "ADDS" if tuning.other > tuning.base else "DROPS"
    print(f"{'FAMILY':<18} {f'PL{tuning.base}':>8} {f'PL{tuning.other}':>8} {change:>8}", file=out)
    if not tuning.families:
        print("(no request reaches the threshold at either level)", file=out)
    for family, tally in sorted(tuning.families.items()):
        print(f"{family:<18} {tally.base:>8,} {tally.other:>8,} {tally.added:>8,}", file=out)
        for value, count in tuning.top(family):
            print(f"  {count:>6,}x {value}", file=out)


def _json_tuning(out: TextIO, tuning: TuningReport) -> None:
    doc = {
        "type": "inspection",
        "rule": tuning.rule,
        "paranoia": tuning.base,
        "compared_with": tuning.other,
        "threshold": tuning.threshold,
        "requests": tuning.requests,
        "hits": tuning.base_hits,
        "compared_hits": tuning.other_hits,
        "families": {
            family: {
                "hits": tally.base,
                "compared_hits": tally.other,
                "changed": tally.added,
                "top_values": [{"value": v, "count": n} for v, n in tuning.top(family)],
            }
            for family, tally in sorted(tuning.families.items())
        },
    }
    out.write(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE).decode())
