"""Delivery under a collector outage: proxy latency with the collector up vs down, in one run.

    .venv/bin/python benchmarks/delivery.py [--seconds 5] [--rounds 2] [--connections 4]

Real Puma, real `proxylog serve` with an http sink (NDJSON, gzip, on-disk spool) and the
test collector (tests/_collector.py) on loopback. Phases alternate up / down / up … so
drift on a shared machine hits both alike; each phase runs `--connections` keep-alive
clients as fast as they go for `--seconds`, every request numbered. After the last phase
the collector stays up until it holds every number (the sequence check), and the table
reports p50/p99 latency and throughput per condition plus the drain time. Everything
started here is stopped here.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests._collector import Collector
from tests.conftest import Proxylog, Puma


def load(port: int, seconds: float, connections: int, first: int) -> tuple[list[float], list[int]]:
    """Closed-loop clients for `seconds`; returns latencies (ms) and the numbers sent."""
    latencies: list[float] = []
    sent: list[int] = []
    counter = iter(range(first, first + 10_000_000))
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while time.monotonic() < deadline:
                with lock:
                    n = next(counter)
                started = time.perf_counter()
                conn.request("GET", f"/seq/{n}")
                response = conn.getresponse()
                response.read()
                elapsed = (time.perf_counter() - started) * 1000
                if response.status != 200:
                    raise RuntimeError(f"request {n}: HTTP {response.status}")
                with lock:
                    latencies.append(elapsed)
                    sent.append(n)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, sent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="proxylog-delivery-"))
    puma = Puma()
    collector = Collector()
    proxy = None
    try:
        sink = {
            "type": "http",
            "url": collector.url + "/ingest",
            "spool": str(work / "spool"),
            "retry": {"initial": "100ms", "max": "1s"},
        }
        proxy = Proxylog(work, {"upstream": puma.url, "sinks": [sink]}, [], None)
        results: dict[str, list[float]] = {"collector up": [], "collector down": []}
        throughput: dict[str, list[float]] = {"collector up": [], "collector down": []}
        sent: list[int] = []
        load(proxy.port, 1.0, args.connections, 10_000_000)  # warm-up, not counted
        for _ in range(args.rounds):
            for condition in ("collector up", "collector down"):
                if condition == "collector down":
                    collector.down()
                else:
                    collector.up()
                latencies, numbers = load(proxy.port, args.seconds, args.connections, len(sent))
                results[condition] += latencies
                throughput[condition].append(len(numbers) / args.seconds)
                sent += numbers
        collector.up()
        drain_started = time.monotonic()
        wanted = set(sent)
        while True:
            got = {int(p.rsplit("/", 1)[1]) for p in collector.paths() if p.startswith("/seq/")}
            if wanted <= got or time.monotonic() - drain_started > 300:
                break
            time.sleep(0.1)
        drain = time.monotonic() - drain_started
        missing = wanted - got
        print(f"{'condition':<16} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        for condition, latencies in results.items():
            print(
                f"{condition:<16} {len(latencies):>9} {statistics.median(throughput[condition]):>8.0f} "
                f"{percentile(latencies, 0.5):>8.2f} {percentile(latencies, 0.99):>8.2f}"
            )
        up, down = results["collector up"], results["collector down"]
        print(f"p99 down/up ratio: {percentile(down, 0.99) / percentile(up, 0.99):.2f}")
        print(
            f"sequence check: sent {len(wanted)}, delivered {len(wanted) - len(missing)}, "
            f"missing {len(missing)}; backlog drained {drain:.1f}s after the collector came back"
        )
        return 0 if not missing else 1
    finally:
        if proxy is not None:
            proxy.stop()
            proxy.close()
        collector.close()
        puma.stop()


if __name__ == "__main__":
    sys.exit(main())
