"""The spray memory curve: one-off addresses through the pipeline, with a scanner among them.

    .venv/bin/python benchmarks/spray.py [--addresses 1000000] [--every 100000]

Runs `tests/rules/_spray.py` in a process of its own (so its resident memory is the spray's):
every sprayed address sends one request answered 404 (counted by `request-flood`, `probing`
and `error-burst-4xx` of the default pack, in enforce mode), and a scanner sends 404s for
distinct paths, two at the start and then one every `--every` addresses. Prints the
proxy's resident memory growth as the addresses arrive, the keys each rule tracks at the
end, and at which request the scanner was banned (`probing` has threshold 11).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=110_000)
    args = parser.parse_args()
    started = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.rules._spray",
            "--addresses",
            str(args.addresses),
            "--every",
            str(args.every),
        ],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    elapsed = time.perf_counter() - started
    result = orjson.loads(out.stdout)
    print(f"{args.addresses:,} one-off addresses, a scanner every {args.every:,}; {elapsed:.0f} s")
    print(f"  RSS at start of the spray: {result['rss_before'] / 2**20:.0f} MiB")
    print(f"  {'addresses':>10} {'RSS growth MiB':>15} {'bytes/address':>14}")
    for addresses, growth in result["curve"]:
        print(f"  {addresses:>10,} {growth / 2**20:>15.1f} {growth / addresses:>14.0f}")
    tracked = ", ".join(f"{rule} {keys:,}" for rule, keys in result["keys"].items() if keys)
    print(f"  keys tracked at the end: {tracked}")
    print(f"  scanner banned at its request {result['banned_at']} (threshold {result['threshold']})")


if __name__ == "__main__":
    main()
