"""Memory and time of refusing oversized request heads, per engine and head shape.

    .venv/bin/python benchmarks/heads.py [--engines mitmproxy fast] [--clients 200]
        [--size 1000000] [--shapes value many url name empty noend]

For each engine and shape a fresh `proxylog serve` (limits.header_bytes 64 KiB) receives
`--clients` concurrent connections, each sending one request head of about `--size` bytes
as fast as the proxy reads it:
- value: one huge header value;      many: many small header lines;
- url: a huge request-target;        name: a huge header name;
- empty: `--size` bytes of empty lines (CRLF) before a small request line;
- noend: a request line that never ends (no line ending at all);
- small: a tiny head refused with 400 (no Host), what any 200 refused connections cost.
Each client reads the reply's status line, then closes. Printed per shape: the replies
(`431 x200`; `reset` for a connection closed before its reply arrived), the time from the
first byte sent to the status line (median and slowest), and the proxy's RSS (MiB) before,
its peak growth during the run (the kernel's high-water mark, VmHWM, reset just before the
run) and its growth left 3 s after the last client closed.
Everything started here is stopped here.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests._hostile import head_shapes, run_clients, status_line
from tests.conftest import Proxylog


def bench(engine: str, shape: str, head: bytes, count: int) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        # refused heads never reach the upstream, so none needs to listen there
        config = {"upstream": "http://127.0.0.1:9", "engine": engine, "limits": {"header_bytes": 65536}}
        proxy = Proxylog(Path(workdir), config, [], None)
        try:
            run_clients(proxy.port, head, 5, status_line)  # warm up: the refusal path is loaded
            time.sleep(2.5)  # the warm-up connections have lingered out
            before = proxy.rss_kib()
            Path(f"/proc/{proxy.proc.pid}/clear_refs").write_text("5")  # VmHWM from VmRSS again
            results = run_clients(proxy.port, head, count, status_line)
            peak = proxy.rss_kib("VmHWM")
            time.sleep(3)
            after = proxy.rss_kib()
        finally:
            proxy.close()
    outcomes = collections.Counter(outcome for outcome, _ in results)
    times = [elapsed for _, elapsed in results]
    print(
        f"{engine:9} {shape:6} {' '.join(f'{k} x{v}' for k, v in sorted(outcomes.items())):16}"
        f" refused in {statistics.median(times):5.2f} s (slowest {max(times):5.2f} s)"
        f"  rss {before / 1024:5.1f} MiB, peak +{(peak - before) / 1024:5.1f},"
        f" after +{(after - before) / 1024:5.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=["mitmproxy", "fast"])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--shapes", nargs="+", default=list(head_shapes(0)), choices=list(head_shapes(0)))
    args = parser.parse_args()
    heads = head_shapes(args.size)
    for engine in args.engines:
        for shape in args.shapes:
            bench(engine, shape, heads[shape], args.clients)


if __name__ == "__main__":
    main()
