"""What each front proxy costs a realistic Puma, measured side by side in one run.

    .venv/bin/python benchmarks/realistic.py [--duration 15] [--rounds 2] [--connections 32]

Puma runs 2 workers x 5 threads serving benchmarks/rails_like.ru (about 1 ms of Ruby CPU, a
10 ms wait, 2 KB of HTML), the shape of a small Rails page. wrk -t2 drives each path:
Puma direct; nginx with a JSON access log; `proxylog serve` on each engine (mitmproxy and
fast) with the shipped configs/proxylog.yaml rule pack in monitor mode, redaction on, and a
file sink. Rounds are interleaved so drift on a shared machine hits every path alike; the
table shows the median round, and each path's throughput and p50 as a ratio of Puma direct
in the same run. CPU µs/req is the proxy process's utime+stime per request. Everything
started here is stopped here. Needs Debian's puma, nginx and wrk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
from e2e import Result, cpu_seconds, nginx, start, stop, wrk  # noqa: E402

from tests.conftest import free_port  # noqa: E402

ROOT = BENCH.parent
BIN = Path(sys.executable).parent
APP = BENCH / "rails_like.ru"


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its direct children (nginx's work is done by its worker)."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += cpu_seconds(int(stat.parent.name))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run (default 15)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    args = parser.parse_args()
    for tool in ("puma", "nginx", "wrk"):
        if not shutil.which(tool):
            print(f"missing {tool}: apt-get install {tool}", file=sys.stderr)
            return 1

    work = Path(tempfile.mkdtemp(prefix="proxylog-realistic-"))
    puma_port = free_port()
    puma = start(
        ["puma", "-q", "-w", "2", "-t", "5:5", "-b", f"tcp://127.0.0.1:{puma_port}", str(APP)],
        puma_port,
        cwd=BENCH,
    )
    time.sleep(2)  # both workers booted
    upstream = f"http://127.0.0.1:{puma_port}"

    def proxylog(engine: str, workers: int = 1) -> Callable[[int], subprocess.Popen[bytes]]:
        name = f"{engine}-{workers}"
        config = work / f"proxylog-{name}.yaml"
        config.write_text(
            f"engine: {engine}\n"
            f"workers: {workers}\n"
            f"sinks: [{{type: file, path: {work}/access-{name}.jsonl}}]\n"
            f"state_dir: {work}/state-{name}\n"
            f"rules: [{{include: {ROOT}/configs/rules/default.yaml}}]\n"
        )

        def launch(port: int) -> subprocess.Popen[bytes]:
            cmd = [str(BIN / "proxylog"), "serve", "--config", str(config), "--upstream", upstream]
            return start([*cmd, "--listen", f"127.0.0.1:{port}"], port)

        return launch

    paths: dict[str, Callable[[int], subprocess.Popen[bytes] | None]] = {
        "Puma direct": lambda port: None,
        "nginx + JSON access log": lambda port: nginx(puma_port, port, work),
        "proxylog, engine mitmproxy": proxylog("mitmproxy"),
        "proxylog, engine fast": proxylog("fast"),
        "proxylog, engine fast, 2 workers": proxylog("fast", workers=2),
    }
    results: dict[str, list[Result]] = {name: [] for name in paths}
    try:
        for round_no in range(args.rounds):
            for name, launch in paths.items():
                port = puma_port if name == "Puma direct" else free_port()
                proc = launch(port)
                try:
                    wrk(port, 3, args.connections, threads=2)  # warm-up
                    pid = proc.pid if proc is not None else None
                    before = tree_cpu(pid) if pid else 0.0
                    result = wrk(port, args.duration, args.connections, threads=2)
                    if pid:
                        result.cpu_us = (tree_cpu(pid) - before) / result.requests * 1e6
                    results[name].append(result)
                finally:
                    if proc is not None:
                        stop(proc)
                print(f"round {round_no + 1}: {name}: {results[name][-1].rps:.0f} req/s", file=sys.stderr)
                time.sleep(1)
    finally:
        stop(puma)
        shutil.rmtree(work, ignore_errors=True)

    median = {name: sorted(rs, key=lambda r: r.rps)[len(rs) // 2] for name, rs in results.items()}
    base = median["Puma direct"]
    print(
        f"\nPuma 2 workers x 5 threads, rails_like.ru; wrk -t2 -c{args.connections} -d{args.duration}s, "
        f"{args.rounds} interleaved rounds, median round; Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores\n"
    )
    print("| path | req/s | x Puma req/s | p50 ms | p99 ms | proxy CPU µs/req |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in median.items():
        cpu = f"{r.cpu_us:,.0f}" if r.cpu_us is not None else "-"
        print(
            f"| {name} | {r.rps:,.0f} | {r.rps / base.rps:.2f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {cpu} |"
        )
    spread = {name: [round(r.rps) for r in rs] for name, rs in results.items()}
    print(f"\nall rounds (req/s): {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
