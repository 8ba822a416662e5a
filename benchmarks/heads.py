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
first byte sent to the status line (median and slowest), and the proxy's RSS (MiB) before, its peak growth
during the run (sampled every 10 ms) and its growth left 3 s after the last client closed.
Everything started here is stopped here.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import Proxylog


def shapes(size: int) -> dict[str, bytes]:
    return {
        "value": b"GET / HTTP/1.1\r\nHost: app\r\nX-Big: " + b"a" * size + b"\r\n\r\n",
        "many": b"GET / HTTP/1.1\r\nHost: app\r\n" + b"X-h: v\r\n" * (size // 8) + b"\r\n",
        "url": b"GET /" + b"a" * size + b" HTTP/1.1\r\nHost: app\r\n\r\n",
        "name": b"GET / HTTP/1.1\r\nHost: app\r\n" + b"X" * size + b": v\r\n\r\n",
        "empty": b"\r\n" * (size // 2) + b"GET / HTTP/1.1\r\nHost: app\r\n\r\n",
        "noend": b"GET /" + b"a" * size,
        "small": b"GET / HTTP/1.1\r\n\r\n",  # the floor: a tiny head refused (400, no Host)
    }


async def one_client(port: int, head: bytes, index: int) -> tuple[str, float]:
    # each client from its own loopback address, as distinct clients are (the fast plane caps
    # the connections of one address)
    source = (f"127.1.{index // 250}.{index % 250 + 1}", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=source)
    except OSError as e:
        return f"connect: {type(e).__name__}", 0.0
    started = time.perf_counter()  # not counting the connect (a full accept backlog delays it 1 s)
    writer.write(head)  # the transport sends the rest as the proxy reads it
    try:
        line = await asyncio.wait_for(reader.readline(), 60)
        outcome = line.split(b" ")[1].decode() if line.startswith(b"HTTP/") else "closed" if not line else "?"
    except (OSError, asyncio.IncompleteReadError):
        outcome = "reset"
    except TimeoutError:
        outcome = "timeout"
    elapsed = time.perf_counter() - started
    writer.transport.abort()
    return outcome, elapsed


async def clients(port: int, head: bytes, count: int) -> list[tuple[str, float]]:
    return await asyncio.gather(*(one_client(port, head, index) for index in range(count)))


class PeakRss:
    """Samples a proxy's RSS every 10 ms in a thread; `peak` is the highest seen (KiB)."""

    def __init__(self, proxy: Proxylog) -> None:
        self.proxy = proxy
        self.peak = proxy.rss_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proxy.rss_kib())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def bench(engine: str, shape: str, head: bytes, count: int) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        # refused heads never reach the upstream, so none needs to listen there
        config = {"upstream": "http://127.0.0.1:9", "engine": engine, "limits": {"header_bytes": 65536}}
        proxy = Proxylog(Path(workdir), config, [], None)
        try:
            asyncio.run(clients(proxy.port, head, 5))  # warm up: the refusal path is loaded
            time.sleep(2.5)  # the warm-up connections have lingered out
            before = proxy.rss_kib()
            sampler = PeakRss(proxy)
            results = asyncio.run(clients(proxy.port, head, count))
            time.sleep(3)
            peak = sampler.stop()
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
    parser.add_argument("--shapes", nargs="+", default=list(shapes(0)), choices=list(shapes(0)))
    args = parser.parse_args()
    heads = shapes(args.size)
    for engine in args.engines:
        for shape in args.shapes:
            bench(engine, shape, heads[shape], args.clients)


if __name__ == "__main__":
    main()
