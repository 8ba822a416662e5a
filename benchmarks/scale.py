"""Scaling out: one and two workers, memory and Redis state, and how fast a ban reaches
another instance.

    .venv/bin/python benchmarks/scale.py [--duration 10] [--rounds 3] [--bans 100] [--engine fast]

1. Throughput: wrk against `proxylog serve` (file sink, the default rule pack, monitor mode)
   with `state: memory` and with `state: redis`, at `--workers 1` and (fast engine) `--workers
   2`, rounds interleaved so drift on a shared machine hits all alike; proxy CPU per request
   from /proc (the supervisor and every worker); Redis commands and round trips per request
   (redis-server's own counter, and the stores').
2. Ban propagation: two instances on one Redis; `ban` through A's control socket, then B is
   polled over a keep-alive connection until it answers 403 for that client; p50/p99 over
   `--bans` bans, measured from the moment A's control call returned (the ban is live there).

Real Puma, real redis-server (no persistence), real proxylog processes; everything started
here is stopped here. Needs Debian's puma, redis-server and wrk.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxylog.ops.client import ControlClient
from tests.conftest import Proxylog, Puma, free_port
from tests.state.conftest import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def wrk(url: str, duration: int, connections: int) -> tuple[float, int, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url + "/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return rps, requests, float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def redis_commands(redis: RedisServer) -> int:
    info = redis.cli("INFO", "stats")
    return int(re.search(r"total_commands_processed:(\d+)", info).group(1))  # type: ignore[union-attr]


def status(proxy: Proxylog) -> dict[str, Any]:
    _, payload = ControlClient(socket_path=str(proxy.control_socket)).call("GET", "/status", None)
    return payload


def processes(proxy: Proxylog) -> list[int]:
    """The proxy's pid and, under a supervisor, every worker's."""
    return [proxy.proc.pid, *(w["pid"] for w in status(proxy).get("workers", []))]


def round_trips(proxy: Proxylog) -> int:
    """The Redis round trips of every store (one per worker)."""
    workers = status(proxy).get("workers")
    if not workers:
        return int(status(proxy)["state"].get("round_trips", 0))
    state_dir = proxy.control_socket.parent
    total = 0
    for worker in workers:
        socket_path = state_dir / "workers" / str(worker["index"]) / "control.sock"
        _, payload = ControlClient(socket_path=str(socket_path)).call("GET", "/status", None)
        total += int(payload["state"].get("round_trips", 0))
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


def throughput(args: argparse.Namespace, work: Path, puma: Puma, redis: RedisServer) -> None:
    base = {
        "upstream": puma.url,
        "engine": args.engine,
        "mode": "monitor",
        "rules": [{"include": str(ROOT / "configs/rules/default.yaml")}],
    }
    shared = {"state": {"backend": "redis", "url": redis.url, "key_prefix": "bench:"}}
    configs = {"memory, 1 worker": base, "redis, 1 worker": {**base, **shared}}
    if args.engine == "fast":
        configs["memory, 2 workers"] = {**base, "workers": 2}
        configs["redis, 2 workers"] = {**base, **shared, "workers": 2}
    results: dict[str, list[tuple[float, float, float, float, float]]] = {k: [] for k in configs}
    for round_ in range(args.rounds):
        for name, config in configs.items():
            folder = work / f"{name.replace(' ', '')}-{round_}"
            folder.mkdir()
            proxy = Proxylog(folder, {"listen": f"127.0.0.1:{free_port()}", **config}, [], subprocess.DEVNULL)
            try:
                wrk(proxy.url, 2, args.connections)  # warm-up
                pids = processes(proxy)
                cpu, commands = sum(map(cpu_seconds, pids)), redis_commands(redis)
                trips = round_trips(proxy)
                rps, requests, p99 = wrk(proxy.url, args.duration, args.connections)
                cpu = sum(map(cpu_seconds, pids)) - cpu
                commands = redis_commands(redis) - commands - 2  # less the two INFO calls
                trips = round_trips(proxy) - trips
                per_cpu = cpu / requests * 1e6
                results[name].append((rps, p99, per_cpu, commands / requests, trips / requests))
                print(f"round {round_ + 1} {name}: {rps:,.0f} req/s", file=sys.stderr)
            finally:
                proxy.stop()
                proxy.close()
    print(
        f"\n### Throughput by state backend and workers (wrk -t1 -c{args.connections} -d{args.duration}s, "
        f"{args.rounds} interleaved rounds, median; engine {args.engine})\n"
    )
    print("| state | req/s | p99 ms | proxy CPU µs/req | Redis commands/req | round trips/100 req |")
    print("|---|---:|---:|---:|---:|---:|")
    medians = {}
    for name, rows in results.items():
        cols = [statistics.median(col) for col in zip(*rows, strict=True)]
        medians[name] = cols[0]
        print(
            f"| {name} | {cols[0]:,.0f} | {cols[1]:.2f} | {cols[2]:,.0f} | "
            f"{cols[3]:.3f} | {cols[4] * 100:.2f} |"
        )
    ratio = medians["redis, 1 worker"] / medians["memory, 1 worker"]
    print(f"\nredis / memory throughput at one worker: {ratio:.2f}")
    if "memory, 2 workers" in medians:
        print(f"two workers / one, memory: {medians['memory, 2 workers'] / medians['memory, 1 worker']:.2f}")
        print(f"two workers / one, redis: {medians['redis, 2 workers'] / medians['redis, 1 worker']:.2f}")
    print(
        "All rounds (req/s): "
        + " · ".join(f"{name} " + "/".join(f"{r[0]:,.0f}" for r in rows) for name, rows in results.items())
    )


def propagation(args: argparse.Namespace, work: Path, puma: Puma, redis: RedisServer) -> None:
    config = {
        "upstream": puma.url,
        "engine": args.engine,
        "mode": "enforce",
        "trusted_proxies": ["127.0.0.0/8"],
        "state": {"backend": "redis", "url": redis.url, "key_prefix": "prop:"},
    }
    (work / "a").mkdir()
    (work / "b").mkdir()
    a = Proxylog(work / "a", config, [], subprocess.DEVNULL)
    b = Proxylog(work / "b", config, [], subprocess.DEVNULL)
    control = ControlClient(socket_path=str(a.control_socket))
    conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=10)
    delays: list[float] = []
    try:
        for n in range(args.bans):
            ip = f"198.18.{n // 250}.{n % 250 + 1}"
            status, _ = control.call("POST", "/ban", {"key": ip, "ttl": "10m", "reason": None})
            assert status == 200, status
            live = time.perf_counter()
            while True:
                conn.request("GET", "/", headers={"X-Forwarded-For": ip})
                response = conn.getresponse()
                response.read()
                if response.status == 403:
                    break
                if time.perf_counter() - live > 10:
                    raise RuntimeError(f"ban of {ip} did not reach B in 10 s")
            delays.append((time.perf_counter() - live) * 1000)
    finally:
        conn.close()
        for proxy in (a, b):
            proxy.stop()
            proxy.close()
    print(f"\n### Ban propagation, A → B ({len(delays)} bans)\n")
    print("| p50 ms | p99 ms | max ms |")
    print("|---:|---:|---:|")
    print(f"| {percentile(delays, 0.5):.1f} | {percentile(delays, 0.99):.1f} | {max(delays):.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--bans", type=int, default=100)
    parser.add_argument(
        "--engine", default="fast", choices=("mitmproxy", "fast", "auto"), help="two workers need fast"
    )
    args = parser.parse_args()
    for tool in ("puma", "redis-server", "wrk"):
        if not shutil.which(tool):
            print(f"missing {tool}: apt-get install {tool}", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="proxylog-scale-"))
    puma = Puma()
    redis = RedisServer(work)
    try:
        throughput(args, work, puma, redis)
        propagation(args, work, puma, redis)
    finally:
        redis.stop()
        puma.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
