"""A spray of one-off addresses through the plane-neutral pipeline, with a scanner among them.

    python -m tests.rules._spray [--addresses 1000000] [--every 110000]

Each sprayed address sends one request for a path of its own, answered 404 (a distributed
probe: every 404 is counted by three rules of the default pack; the 1.7% of addresses on the
pack's threat-intel lists are refused at once). One scanner sends 404s for distinct paths:
two at the start, then one every `every` sprayed addresses (110,000), so between its requests
more one-off keys arrive than a rule tracks (`max_keys`, 100,000). Run in its own process (the
test and benchmarks/spray.py do), it prints one JSON line: the resident memory before and
after, and at which of its requests the scanner was banned.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
from pathlib import Path

import orjson

from proxylog.config import load_config
from proxylog.pipeline import Pipeline, RequestHead
from proxylog.runtime import Runtime
from proxylog.testing import FakeClock

ROOT = Path(__file__).resolve().parents[2]
SCANNER = "198.51.100.7"
HEADERS = [(b"Host", b"shop.example.com"), (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0")]
RESPONSE = [(b"Content-Type", b"text/html"), (b"Content-Length", b"1722")]


def address(n: int) -> str:
    """The n-th sprayed address: spread over 1.0.0.0 to 223.255.255.255 (a multiplicative hash of
    n), so /24 networks are as distinct as the addresses; never the scanner's."""
    value = 0x01000000 + (n * 2_654_435_761) % (0xDF000000 - 0x01000000)
    text = f"{value >> 24}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"
    return "1.0.0.1" if text == SCANNER else text


def rss() -> int:
    """This process's resident memory in bytes, now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def spray(addresses: int, every: int, step: float = 50e-6, samples: int = 10) -> dict[str, object]:
    """Run the spray through the default pack in enforce mode (clock `step` seconds apart per
    request, so a million requests fit in the rules' one-minute windows)."""
    config = load_config(ROOT / "configs" / "proxylog.yaml")
    config = dataclasses.replace(config, mode="enforce")
    clock = FakeClock()
    runtime = Runtime(config, sinks=[], clock=clock)
    pipeline = Pipeline(runtime)
    banned_at: int | None = None
    scanner_requests = 0
    counts: list[int] = []  # probing's count for the scanner after each of its requests

    def request(ip: str, path: str) -> bool:
        head = RequestHead(b"GET", path.encode(), b"HTTP/1.1", list(HEADERS), (ip, 40_000), False, clock())
        ex = pipeline.begin(head)
        blocked = pipeline.decide(ex) is not None
        if not blocked:
            ex.request_ended = ex.response_started = clock()
            pipeline.response_fields(ex, RESPONSE)
            ex.status, ex.response_head_bytes, ex.response_body_bytes = 404, 90, 1722
        pipeline.finish(ex)
        clock.advance(step)
        return blocked

    def scan() -> None:
        nonlocal banned_at, scanner_requests
        scanner_requests += 1
        request(SCANNER, f"/probe-{scanner_requests}")
        counts.append(runtime.engine.peek("probing", SCANNER))
        if banned_at is None and runtime.engine.store.bans.get(SCANNER) is not None:
            banned_at = scanner_requests

    scan()
    scan()
    before = rss()
    curve = []
    for n in range(addresses):
        request(address(n), f"/missing/{n}")
        if (n + 1) % every == 0:
            scan()
        if (n + 1) % max(1, addresses // samples) == 0:
            curve.append((n + 1, rss() - before))
    return {
        "addresses": addresses,
        "rss_before": before,
        "rss_growth": rss() - before,
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "curve": curve,
        "scanner_requests": scanner_requests,
        "banned_at": banned_at,
        "counts": counts,
        "ban_rule": ban.rule if (ban := runtime.engine.store.bans.get(SCANNER)) else None,
        "threshold": next(r.threshold for r in config.rules.rules if r.id == "probing"),
        "keys": {rule: stats["keys"] for rule, stats in runtime.engine.stats().as_dict()["rules"].items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--addresses", type=int, default=1_000_000, help="one-off addresses sprayed")
    parser.add_argument(
        "--every", type=int, default=110_000, help="sprayed addresses between scanner requests"
    )
    args = parser.parse_args(argv)
    sys.stdout.write(orjson.dumps(spray(args.addresses, args.every)).decode() + "\n")


if __name__ == "__main__":
    main()
