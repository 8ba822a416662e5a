"""The fast plane's floor: CPU per request of the plane alone (a minimal handler), against
Puma direct, with the default asyncio loop and with uvloop; plus its memory per idle
connection and the timer cost that chose the deadline sweep.

    .venv/bin/python benchmarks/fast_floor.py [--duration 10] [--rounds 3] [--threads 2]
        [--connections 8] [--idle 10000] [--skip-idle] [--skip-timers]

Rounds are interleaved so drift on a shared machine hits every path alike; the table shows
the median round. CPU µs/request is the proxy process's utime+stime over the run (from
/proc/PID/stat) divided by the requests wrk completed. Needs Debian's puma and wrk.
Everything started here is stopped here.

`--serve` (internal) runs one plane in this process: the benchmark starts it that way.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from proxylog.fast import FastOptions, FastServer, RequestHead
from proxylog.http1 import make_reply
from tests.conftest import RACK_APP, free_port, wait_for_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- the plane under test, with the least a pipeline could do -------------------------------


@dataclass(slots=True)
class LeanExchange:
    request_id: str
    path: bytes
    upstream_headers: list[tuple[bytes, bytes]]
    method: bytes
    request_body_bytes: int = 0
    request_ended: float | None = None
    response_started: float | None = None
    response_head_bytes: int = 0
    response_body_bytes: int = 0
    status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    upgraded: bool = False
    extra: list[object] = field(default_factory=list)


class LeanHandler:
    """Forwards the head unchanged plus X-Request-Id, echoes it, keeps nothing."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.finished = 0

    def begin(self, head: RequestHead) -> LeanExchange:
        rid = f"{next(self._ids):x}"
        return LeanExchange(rid, head.target, [*head.headers, (b"X-Request-Id", rid.encode())], head.method)

    def check(self, ex: LeanExchange) -> bytes | None:
        return None

    def wants_body(self, ex: LeanExchange) -> int:
        return 0

    def check_body(self, ex: LeanExchange, body: bytes) -> bytes | None:
        return None

    def response_head(
        self, ex: LeanExchange, status: int, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        headers.append((b"X-Request-Id", ex.request_id.encode()))
        return headers

    def reply(self, ex: LeanExchange, status: int, error_type: str | None, message: str) -> bytes:
        ex.status, ex.error_type, ex.error_message = status, error_type, message
        return make_reply(status, ex.request_id, ex.method == b"HEAD")

    def refuse(self, head: RequestHead | None, status: int, message: str) -> bytes:
        return make_reply(status, "", False)

    def finish(self, ex: LeanExchange) -> None:
        self.finished += 1

    def unreadable(self, reason: str, timed_out: bool = False, first: bool = False) -> None:
        pass

    def is_trusted(self, ip: str) -> bool:
        return True


def serve(port: int, upstream: int, loop_kind: str, with_mitmproxy: bool) -> None:
    """Run one plane until SIGTERM (the benchmark's child process)."""
    if with_mitmproxy:
        import mitmproxy.http  # noqa: F401  (the question is whether it coexists with uvloop)

    async def main() -> None:
        options = FastOptions(upstream_port=upstream, listen_port=port, connections_per_client=0)
        server = FastServer(options, LeanHandler())  # type: ignore[arg-type]
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print("listening", flush=True)
        await stop.wait()
        await server.drain(1)
        await server.close()

    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


# -- the runner ----------------------------------------------------------------------------


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_us: float | None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads included (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port: int, duration: int, threads: int, connections: int, pid: int | None) -> Result:
    before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = cpu_seconds(pid) - before if pid else None
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if not requests:
        raise RuntimeError(f"wrk completed no request:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"(?m)^\s+50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"(?m)^\s+99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"  wrk reported: {errors.group(0)}", file=sys.stderr)
    return Result(rps, p50, p99, requests, cpu * 1e6 / requests if cpu is not None else None)


def start_plane(
    upstream: int, loop_kind: str, with_mitmproxy: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = [sys.executable, __file__, "--serve", str(port), "--upstream", str(upstream), "--loop", loop_kind]
    if with_mitmproxy:
        args.append("--with-mitmproxy")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    wait_for_port(port)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def throughput(args: argparse.Namespace, puma_port: int, puma_pid: int) -> None:
    paths: dict[str, list[Result]] = {
        "Puma direct": [],
        "fast plane (asyncio)": [],
        "fast plane (uvloop)": [],
    }
    for round_no in range(args.rounds):
        for name in paths:
            if name == "Puma direct":
                result = wrk(puma_port, args.duration, args.threads, args.connections, puma_pid)
            else:
                proc, port = start_plane(puma_port, "uvloop" if "uvloop" in name else "asyncio")
                try:
                    wrk(port, 2, args.threads, args.connections, None)  # warm-up
                    result = wrk(port, args.duration, args.threads, args.connections, proc.pid)
                finally:
                    stop(proc)
            paths[name].append(result)
            cpu = f"{result.cpu_us:.0f}" if result.cpu_us is not None else "-"
            print(f"round {round_no + 1} {name}: {result.rps:,.0f} req/s, {cpu} µs/req", file=sys.stderr)
    print(
        f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s GET /, "
        f"{args.rounds} interleaved rounds, median round (by req/s)\n"
    )
    print("| path | req/s | p50 ms | p99 ms | CPU µs/req (proxy; Puma for direct) |")
    print("|---|---:|---:|---:|---:|")
    for name, results in paths.items():
        ranked = sorted(results, key=lambda r: r.rps)
        mid = ranked[len(ranked) // 2]
        cpus = [r.cpu_us for r in results if r.cpu_us is not None]
        cpu = f"{mid.cpu_us:.0f} (median {statistics.median(cpus):.0f})" if cpus and mid.cpu_us else "-"
        print(f"| {name} | {mid.rps:,.0f} | {mid.p50_ms:.2f} | {mid.p99_ms:.2f} | {cpu} |")
    print()
    for name, results in paths.items():
        print(
            f"- {name} rounds: "
            + " / ".join(
                f"{r.rps:,.0f} req/s {r.cpu_us:.0f} µs" if r.cpu_us else f"{r.rps:,.0f} req/s"
                for r in results
            )
        )


def idle_memory(args: argparse.Namespace, puma_port: int) -> None:
    """RSS of a plane holding `args.idle` idle keep-alive connections (each served once)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.idle * 2 + 1000
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    for loop_kind in ("asyncio", "uvloop"):
        proc, port = start_plane(puma_port, loop_kind)
        try:
            before = rss_kib(proc.pid)
            sockets = []
            request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
            for batch in range(0, args.idle, 500):
                opened = []
                for _ in range(min(500, args.idle - batch)):
                    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                    sock.sendall(request)
                    opened.append(sock)
                for sock in opened:  # read each response: the connection is then idle, kept alive
                    data = b""
                    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                        data += sock.recv(65536)
                sockets += opened
            time.sleep(1)
            after = rss_kib(proc.pid)
            print(
                f"{loop_kind}: {args.idle} idle keep-alive connections: RSS {before / 1024:.1f} MiB before, "
                f"{after / 1024:.1f} MiB after, {(after - before) * 1024 / args.idle:,.0f} bytes each"
            )
            for sock in sockets:
                sock.close()
        finally:
            stop(proc)


def timers() -> None:
    """Arm+disarm cost: one dict-based deadline per connection vs a loop TimerHandle."""
    from proxylog.fast.deadlines import Deadlines

    n = 200_000
    due: Deadlines[int] = Deadlines(10.0, time.monotonic)
    start = time.perf_counter()
    for i in range(n):
        due.arm(i)
        due.disarm(i)
    sweep = (time.perf_counter() - start) / n * 1e9

    async def handles() -> float:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        for _ in range(n):
            loop.call_later(10.0, int).cancel()
        return (time.perf_counter() - t0) / n * 1e9

    for loop_kind in ("asyncio", "uvloop"):
        if loop_kind == "uvloop":
            import uvloop

            handle = uvloop.run(handles())
        else:
            handle = asyncio.run(handles())
        print(f"{loop_kind}: call_later+cancel {handle:.0f} ns; Deadlines arm+disarm {sweep:.0f} ns")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--with-mitmproxy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--skip-idle", action="store_true")
    parser.add_argument("--skip-timers", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.upstream, args.loop, args.with_mitmproxy)
        return
    puma_port = free_port()
    puma = subprocess.Popen(
        ["puma", "-q", "-b", f"tcp://127.0.0.1:{puma_port}", "-t", "4:16", str(RACK_APP)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=RACK_APP.parent,
    )
    try:
        wait_for_port(puma_port)
        if not args.skip_throughput:
            throughput(args, puma_port, puma.pid)
        if not args.skip_idle:
            idle_memory(args, puma_port)
        if not args.skip_timers:
            timers()
    finally:
        stop(puma)


if __name__ == "__main__":
    main()
