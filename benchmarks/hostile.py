"""Legitimate latency beside hostile clients, per engine, each attack against a baseline
measured in the same run; and the spray memory curve.

    .venv/bin/python benchmarks/hostile.py [--engines mitmproxy fast] [--attackers 200]
        [--sources 1] [--seconds 12] [--requests 1000] [--rounds 3]
        [--phases slowloris "slow body" "slow read"] [--spray 0]

For each engine one `proxylog serve` runs in front of Puma (the defaults: timeouts.header
10 s, body_rate 1 KiB/s over 10 s, write 60 s, 64 connections per client). Each phase, for
`--rounds` rounds: a baseline (`--requests` plain GETs from one closed-loop client, no
attack), then `--attackers` connections of one kind held open for `--seconds` while the same
client sends `--requests` GETs again:
- slowloris: a partial request head, one more header line per second;
- slow body: a complete head announcing a 1 MB body, one body byte per second;
- slow read: four pipelined GETs of a 1 MiB response, never read;
- large read (not run unless named): one GET of a 64 MiB response, never read.
The attackers connect from `--sources` loopback addresses (127.0.1.x, in turn): 1 is one
client, which the per-client cap mostly turns away; as many as the attackers is a botnet.
The legitimate client is 127.0.0.2. Printed per phase: legitimate p50/p99 (ms) in the last
round, the p99 against its round's baseline (median of the rounds, and each round), attack
connections still open at the end, how many of the attack's requests Puma received in the
last round (of those sent), and the proxy's RSS (MiB) at the end.
`--spray N` then runs benchmarks/spray.py with N addresses (the per-key memory curve).
Everything started here is stopped here.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import ROOT, Proxylog, Puma

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


def slow_read_large(sock: socket.socket, tick: int) -> None:
    if tick == 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /large?mb=64&large HTTP/1.1\r\nHost: app\r\n\r\n")


ATTACKS: dict[str, Attack] = {
    "slowloris": slowloris,
    "slow body": slow_body,
    "slow read": slow_read,
    "large read": slow_read_large,
}
# Each attack's path and requests per connection: how many of them Puma received is counted.
AT_PUMA = {
    "slowloris": ("/slowloris", 1),
    "slow body": ("/upload", 1),
    "slow read": ("/large?mb=1", 4),
    "large read": ("/large?mb=64&large", 1),
}


def legit(port: int, requests: int) -> list[float]:
    # from another loopback address than the attackers, as a real client would be: both
    # planes cap concurrent connections per client address
    # A request that times out (30 s) counts as its time, and the client reconnects.
    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0))

    conn = connect()
    times = []
    for i in range(requests):
        started = time.perf_counter()
        try:
            conn.request("GET", f"/legit/{i}")
            conn.getresponse().read()
        except (TimeoutError, OSError, http.client.HTTPException):
            conn.close()
            conn = connect()
        times.append((time.perf_counter() - started) * 1000)
    conn.close()
    return times


def run_attack(
    port: int, attack: Attack, attackers: int, sources: int, seconds: float, stop: threading.Event
) -> list[socket.socket]:
    socks = []
    for n in range(attackers):
        source = f"127.0.{1 + (n % sources) // 250}.{1 + (n % sources) % 250}"
        with contextlib.suppress(OSError):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)))
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


def bench(engine: str, args: argparse.Namespace, puma: Puma) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        proxy = Proxylog(Path(workdir), {"upstream": puma.url, "engine": engine}, [], None)
        try:
            legit(proxy.port, 50)  # warm up
            base = legit(proxy.port, args.requests)
            print(
                f"{engine:9} baseline   p50 {pct(base, 50):6.1f} p99 {pct(base, 99):6.1f}"
                f"  rss {proxy.rss_kib() / 1024:5.0f} MiB"
            )
            for name in args.phases:
                ratios = []
                path, per_connection = AT_PUMA[name]
                for _ in range(args.rounds):
                    base = legit(proxy.port, args.requests)
                    seen = len(puma.seen(path))
                    times, socks = attacked(proxy.port, ATTACKS[name], args)
                    ratios.append(pct(times, 99) / pct(base, 99))
                    alive = still_open(socks)
                    reached = len(puma.seen(path)) - seen
                    for sock in socks:
                        sock.close()
                    time.sleep(1)
                rounds = " ".join(f"{r:.2f}" for r in ratios)
                print(
                    f"{engine:9} {name:10} p50 {pct(times, 50):6.1f} p99 {pct(times, 99):6.1f}"
                    f" ({statistics.median(ratios):4.2f}x; rounds {rounds})  open after"
                    f" {args.seconds:g} s: {alive}/{len(socks)}"
                    f"  at Puma {reached}/{per_connection * len(socks)}"
                    f"  rss {proxy.rss_kib() / 1024:5.0f} MiB"
                )
        finally:
            proxy.close()


def attacked(port: int, attack: Attack, args: argparse.Namespace) -> tuple[list[float], list[socket.socket]]:
    """The legitimate client's times while the attack runs, and the attack's sockets."""
    stop = threading.Event()
    result: list[list[socket.socket]] = []
    thread = threading.Thread(
        target=lambda: result.append(
            run_attack(port, attack, args.attackers, args.sources, args.seconds, stop)
        )
    )
    thread.start()
    time.sleep(2)  # the attack is established
    times = legit(port, args.requests)
    thread.join()
    return times, result[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", nargs="+", default=["mitmproxy", "fast"])
    parser.add_argument("--attackers", type=int, default=200)
    parser.add_argument("--sources", type=int, default=1, help="loopback addresses the attackers use")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--phases", nargs="+", choices=list(ATTACKS), default=list(ATTACKS)[:3])
    parser.add_argument("--spray", type=int, default=0, help="addresses for the spray memory curve (0: none)")
    args = parser.parse_args()
    args.sources = max(1, min(args.sources, args.attackers))
    if args.phases and args.engines:
        puma = Puma()
        try:
            for engine in args.engines:
                bench(engine, args, puma)
        finally:
            puma.stop()
    if args.spray:
        print()
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "spray.py"), "--addresses", str(args.spray)],
            check=True,
        )


if __name__ == "__main__":
    main()
