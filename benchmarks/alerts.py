"""What alerts cost requests: the per-record evidence tracker, and latency while the SMTP
server is dead, each against a baseline measured in the same run.

    .venv/bin/python benchmarks/alerts.py [--records 200000] [--seconds 5] [--rounds 2]

1. In-process: `Runtime.emit` (redact, encode, queue) per record with no alert channel vs
   with an email channel (so every record also feeds the evidence tracker), 1,000 clients,
   interleaved rounds, median shown.
2. End to end: two `proxylog serve` in front of one Puma, each with an email channel and a
   rule that bans every client probing `/.env`; one mails a healthy SMTP server on loopback
   (aiosmtpd), the other one that accepts connections and never answers. Closed-loop
   clients send plain requests while a prober bans a fresh client (X-Forwarded-For) every
   20 ms, so alerts never stop; the plain requests' latency is compared, rounds alternating.
Everything started here is stopped here.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxylog.alerts.evidence import Evidence
from proxylog.config import parse_config
from proxylog.runtime import Runtime
from proxylog.testing import MemorySink, make_record
from tests.alerts._receivers import SmtpReceiver
from tests.conftest import Proxylog, Puma


def emit_cost(records: int, rounds: int) -> None:
    email = {"type": "email", "host": "127.0.0.1", "from": "a@example.com", "to": "b@example.com"}
    runtimes = {
        "no alerts": Runtime(parse_config({}), sinks=[MemorySink()]),
        "email channel": Runtime(parse_config({"alerts": [email]}), sinks=[MemorySink()]),
    }
    batch = [
        make_record(
            client_ip=f"198.51.{i % 1000 // 250}.{i % 250}", path=f"/items/{i % 37}", timestamp=1e9 + i
        )
        for i in range(records)
    ]
    results: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(rounds):
        for name, runtime in runtimes.items():
            worker = runtime.workers[0]
            started = time.perf_counter()
            for record in batch:
                runtime.emit(record)
                if len(worker._queue) > 5000:  # the sink thread is not running: empty its queue
                    worker._queue.clear()
            results[name].append((time.perf_counter() - started) / records * 1e6)
    base = statistics.median(results["no alerts"])
    print(f"{'Runtime.emit':<16} {'µs/record':>10} {'x no alerts':>12}")
    for name, values in results.items():
        print(f"{name:<16} {statistics.median(values):>10.2f} {statistics.median(values) / base:>12.3f}")
    print(
        "all rounds: " + " · ".join(f"{n} " + "/".join(f"{v:.2f}" for v in vs) for n, vs in results.items())
    )
    evidence = Evidence()
    started = time.perf_counter()
    for record in batch:
        evidence.witness(record.client_ip, record.path, record.timestamp)
    print(f"Evidence.witness alone: {(time.perf_counter() - started) / records * 1e9:.0f} ns/record")


def load(port: int, seconds: float, connections: int) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                conn.request("GET", "/", headers={"X-Forwarded-For": "192.0.2.10"})
                response = conn.getresponse()
                response.read()
                elapsed = (time.perf_counter() - started) * 1000
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
                with lock:
                    latencies.append(elapsed)
        finally:
            conn.close()

    def prober() -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(
                "GET",
                "/.env",
                headers={"X-Forwarded-For": f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"},
            )
            conn.getresponse().read()
            conn.close()
            time.sleep(0.02)

    threads = [threading.Thread(target=client) for _ in range(connections)] + [
        threading.Thread(target=prober)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


def smtp_down_latency(seconds: float, rounds: int, connections: int, control: bool) -> None:
    """With `control`, both proxies mail the healthy server: the spread between two equal
    setups on this machine, to read the dead/up ratio against."""
    work = Path(tempfile.mkdtemp(prefix="proxylog-alerts-"))
    puma = Puma()
    smtp = SmtpReceiver(work, "none")
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(1024)
    rules = [{"id": "probing", "when": {"path": "^/\\.env"}, "threshold": 1, "action": "block", "ban": "1h"}]
    proxies: dict[str, Any] = {}
    try:
        dead = smtp.port if control else blackhole.getsockname()[1]
        for condition, port in (("SMTP up", smtp.port), ("SMTP dead", dead)):
            channel = {
                "type": "email", "host": "127.0.0.1", "port": port, "tls": "none", "from": "a@example.com",
                "to": "b@example.com", "group": "200ms", "timeout": "2s", "attempts": 2, "backoff": "1s",
            }  # fmt: skip
            sink = {"type": "file", "path": str(work / f"{port}.jsonl")}
            config = {
                "upstream": puma.url, "rules": rules, "alerts": [channel],
                "trusted_proxies": ["127.0.0.1/32"], "sinks": [sink],
            }  # fmt: skip
            directory = work / condition.replace(" ", "-")
            directory.mkdir()
            proxies[condition] = Proxylog(directory, config, ["--enforce"], None)
        results: dict[str, list[float]] = {name: [] for name in proxies}
        for proxy in proxies.values():
            load(proxy.port, 1.0, connections)  # warm-up, not counted
        for round_ in range(rounds):  # alternate which goes first: drift hits both alike
            order = list(proxies.items())
            for name, proxy in order if round_ % 2 == 0 else order[::-1]:
                results[name] += load(proxy.port, seconds, connections)
        print(f"{'condition':<10} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8}")
        for name, latencies in results.items():
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            print(f"{name:<10} {len(latencies):>9} {p50:>8.2f} {p99:>8.2f}")
        up, down = results["SMTP up"], results["SMTP dead"]
        print(
            f"dead/up ratio: p50 {percentile(down, 0.5) / percentile(up, 0.5):.2f}, "
            f"p99 {percentile(down, 0.99) / percentile(up, 0.99):.2f}; mails received {len(smtp.mails)}"
        )
    finally:
        for proxy in proxies.values():
            proxy.stop()
            proxy.close()
        blackhole.close()
        smtp.close()
        puma.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--control", action="store_true", help="both proxies mail the healthy server")
    parser.add_argument("--skip-emit", action="store_true", help="only the end-to-end part")
    args = parser.parse_args()
    if not args.skip_emit:
        emit_cost(args.records, max(args.rounds, 3))
        print()
    smtp_down_latency(args.seconds, args.rounds, args.connections, args.control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
