"""Legitimate latency beside hostile clients, per engine, each attack against a baseline
measured in the same run.

    .venv/bin/python benchmarks/hostile.py [--engines mitmproxy fast] [--attackers 300]
        [--seconds 12] [--requests 300]

For each engine one `proxylog serve` runs in front of Puma (timeouts.header 10 s). Phases,
one after the other: a baseline (no attack), then `--attackers` connections of each kind
held open for `--seconds` while one closed-loop client sends `--requests` plain GETs:
- slowloris: a partial request head, one more header line per second;
- slow body: a complete head announcing a 1 MB body, one body byte per second;
- slow read: four pipelined GETs of a 1 MiB response, never read.
Printed per phase: legitimate p50/p99 (ms) and p99 against the baseline, attack connections
still open at the end, and the proxy's RSS (MiB) at the end. Everything started here is
stopped here.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import Proxylog, Puma

Attack = Callable[[socket.socket, int], None]


def slowloris(sock: socket.socket, tick: int) -> None:
    sock.sendall(b"GET /slowloris HTTP/1.1\r\nHost: app\r\n" if tick == 0 else b"X-%d: a\r\n" % tick)


def slow_body(sock: socket.socket, tick: int) -> None:
    sock.sendall(
        b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 1000000\r\n\r\n" if tick == 0 else b"a"
    )


def slow_read(sock: socket.socket, tick: int) -> None:
    if tick == 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /large?mb=1 HTTP/1.1\r\nHost: app\r\n\r\n" * 4)


ATTACKS: dict[str, Attack] = {"slowloris": slowloris, "slow body": slow_body, "slow read": slow_read}


def legit(port: int, requests: int) -> list[float]:
    # from another loopback address than the attackers, as a real client would be: the fast
    # plane caps concurrent connections per client address
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0))
    times = []
    for i in range(requests):
        started = time.perf_counter()
        conn.request("GET", f"/legit/{i}")
        conn.getresponse().read()
        times.append((time.perf_counter() - started) * 1000)
    conn.close()
    return times


def run_attack(
    port: int, attack: Attack, attackers: int, seconds: float, stop: threading.Event
) -> list[socket.socket]:
    socks = []
    for _ in range(attackers):
        with contextlib.suppress(OSError):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    tick = 0
    deadline = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < deadline:
        for sock in socks:
            with contextlib.suppress(OSError):
                attack(sock, tick)
        tick += 1
        stop.wait(1.0)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    alive = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            while sock.recv(65536):
                pass
            continue  # b"": the proxy closed it
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def pct(times: list[float], q: int) -> float:
    return statistics.quantiles(times, n=100)[q - 1]


def bench(engine: str, attackers: int, seconds: float, requests: int, puma: Puma) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        proxy = Proxylog(Path(workdir), {"upstream": puma.url, "engine": engine}, [], None)
        try:
            legit(proxy.port, 50)  # warm up
            base = legit(proxy.port, requests)
            print(
                f"{engine:9} baseline   p50 {pct(base, 50):6.1f} p99 {pct(base, 99):6.1f}"
                f"  rss {proxy.rss_kib() / 1024:5.0f} MiB"
            )
            for name, attack in ATTACKS.items():
                stop = threading.Event()
                result: list[list[socket.socket]] = []

                thread = threading.Thread(
                    target=lambda out, *a: out.append(run_attack(*a)),
                    args=(result, proxy.port, attack, attackers, seconds, stop),
                )
                thread.start()
                time.sleep(2)  # the attack is established
                times = legit(proxy.port, requests)
                thread.join()
                socks = result[0]
                alive = still_open(socks)
                print(
                    f"{engine:9} {name:10} p50 {pct(times, 50):6.1f} p99 {pct(times, 99):6.1f}"
                    f" ({pct(times, 99) / pct(base, 99):4.2f}x)  open after {seconds:g} s:"
                    f" {alive}/{len(socks)}  rss {proxy.rss_kib() / 1024:5.0f} MiB"
                )
                for sock in socks:
                    sock.close()
                time.sleep(1)
        finally:
            proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", nargs="+", default=["mitmproxy", "fast"])
    parser.add_argument("--attackers", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    puma = Puma()
    try:
        for engine in args.engines:
            bench(engine, args.attackers, args.seconds, args.requests, puma)
    finally:
        puma.stop()


if __name__ == "__main__":
    main()
