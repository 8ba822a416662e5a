"""Instructions per proxied request, counted by valgrind's callgrind: repeatable on a noisy box.

    .venv/bin/python benchmarks/instructions.py [--requests 300]

Throughput on a shared 2-core machine drifts by ±20% run to run, which hides a 5% addon
overhead. Callgrind counts executed instructions instead: the same binary, inputs and
requests give the same count whatever else the machine does. Each proxy runs under
callgrind with collection off; after start-up and 30 warm-up requests collection is
zeroed, --connections concurrent keep-alive clients send --requests GETs to the echo app
on Puma, and the count is divided by the requests. Paths: plain mitmdump (no addons), the lean
Master without ProxyLog, and `proxylog serve` with a file sink. Needs valgrind and puma.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import RACK_APP, free_port, wait_for_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BIN = Path(sys.executable).parent


def _client(port: int, count: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    for _ in range(count):
        conn.request("GET", "/bench?x=1", headers={"User-Agent": "bench/1.0", "Accept": "*/*"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"unexpected status {response.status}")
    conn.close()


def send(port: int, count: int, connections: int) -> None:
    """`count` GETs spread over `connections` concurrent keep-alive clients."""
    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        jobs = [pool.submit(_client, port, count // connections) for _ in range(connections)]
        for job in jobs:
            job.result()


def count(cmd: list[str], port: int, requests: int, connections: int, work: Path) -> float:
    log = work / "callgrind.log"
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/callgrind.%p", *cmd],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        wait_for_port(port, timeout=300)
        send(port, 32, connections)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        send(port, requests, connections)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(300)
    dumps = sorted(work.glob(f"callgrind.{proc.pid}.*"))
    totals = re.findall(r"^(?:totals|summary): (\d+)", dumps[0].read_text(), re.MULTILINE) if dumps else []
    if not totals:
        raise RuntimeError(f"no callgrind dump for pid {proc.pid} (see {log})")
    return int(totals[0]) / requests


def serve(config: Path, upstream: str, port: int) -> list[str]:
    return [
        str(BIN / "proxylog"),
        "serve",
        "--config",
        str(config),
        "--upstream",
        upstream,
        "--listen",
        f"127.0.0.1:{port}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="measured requests (default 400)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent clients (default 8)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "puma"):
        if not shutil.which(tool):
            print(f"missing {tool}", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="proxylog-insn-"))
    puma_port = free_port()
    puma = subprocess.Popen(
        ["puma", "-q", "-b", f"tcp://127.0.0.1:{puma_port}", "-t", "4:16", str(RACK_APP)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    upstream = f"http://127.0.0.1:{puma_port}"
    config = work / "proxylog.yaml"
    config.write_text(f"sinks: [{{type: file, path: {work}/access.jsonl}}]\nstate_dir: {work}/state\n")
    pack = work / "proxylog-pack.yaml"  # the shipped default: rule pack in monitor mode
    pack.write_text(f"{config.read_text()}rules: [{{include: {ROOT}/configs/rules/default.yaml}}]\n")
    results: dict[str, float] = {}
    try:
        wait_for_port(puma_port)
        paths = {
            "mitmdump (no addons)": lambda p: [
                str(BIN / "mitmdump"),
                "-q",
                "--mode",
                f"reverse:{upstream}@127.0.0.1:{p}",
                "--set",
                "connection_strategy=lazy",
                "--set",
                f"confdir={work}/mitm",
            ],
            "lean Master, plain (no addon)": lambda p: [
                sys.executable,
                str(BENCH / "lean_master.py"),
                "plain",
                upstream,
                str(p),
                str(work / "state"),
            ],
            "lean Master, cached dispatch (no addon)": lambda p: [
                sys.executable,
                str(BENCH / "lean_master.py"),
                "cached",
                upstream,
                str(p),
                str(work / "state"),
            ],
            "proxylog serve (file sink)": lambda p: serve(config, upstream, p),
            "proxylog serve (file sink, default rule pack)": lambda p: serve(pack, upstream, p),
        }
        for name, make in paths.items():
            port = free_port()
            started = time.monotonic()
            results[name] = count(make(port), port, args.requests, args.connections, work)
            print(
                f"{name}: {results[name]:,.0f} instructions/request ({time.monotonic() - started:.0f}s)",
                file=sys.stderr,
            )
    finally:
        puma.terminate()
        puma.wait(15)
        shutil.rmtree(work, ignore_errors=True)

    lean = results["lean Master, cached dispatch (no addon)"]
    print(
        f"\ncallgrind, {args.requests} GETs over {args.connections} keep-alive connections after 32 "
        f"warm-up; Python {sys.version.split()[0]}\n"
    )
    print("| path | instructions/request | x lean Master (cached, no addon) |")
    print("|---|---:|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:,.0f} | {value / lean:.3f} |")
    proxylog = results["proxylog serve (file sink)"]
    plain = results["lean Master, plain (no addon)"]
    print(
        f"\nProxyLog's own cost over the same master without it: {(proxylog / lean - 1) * 100:+.1f}%; "
        f"over mitmproxy's plain lean Master: {(proxylog / plain - 1) * 100:+.1f}%; "
        f"mitmdump costs {results['mitmdump (no addons)'] / proxylog:.2f}x proxylog's instructions"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
