"""End-to-end throughput and latency: wrk against nine paths to the same Puma, in one run.

    .venv/bin/python benchmarks/e2e.py [--duration 10] [--rounds 2] [--connections 8]

Paths: Puma direct; nginx reverse proxy with a JSON access log; plain `mitmdump` reverse
(its default addons, no script); a lean mitmproxy Master with no addon (proxylog's master
minus ProxyLog); `proxylog serve` on each engine (mitmproxy, fast) writing records to a
file, without and with the default rule pack (monitor mode; redaction is on in all).
Rounds are interleaved so drift on a shared machine hits every path alike; the table shows
the median round. Everything
started here is stopped here. Needs Debian's puma, nginx and wrk.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import RACK_APP, free_port, wait_for_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int = 0
    cpu_us: float | None = None  # proxy process CPU (all threads) per request


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads included (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start(cmd: list[str], port: int, **kwargs) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    wait_for_port(port)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def nginx(upstream_port: int, port: int, work: Path) -> subprocess.Popen[bytes]:
    conf = work / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            worker_processes 1;
            daemon off;
            pid {work}/nginx.pid;
            error_log {work}/nginx-error.log;
            events {{ worker_connections 1024; }}
            http {{
              client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
              fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
              log_format ecs escape=json '{{"@timestamp":"$time_iso8601","client":{{"ip":"$remote_addr"}},'
                '"http":{{"request":{{"method":"$request_method","id":"$request_id"}},'
                '"response":{{"status_code":$status,"bytes":$bytes_sent}}}},'
                '"url":{{"path":"$uri","query":"$args"}},"user_agent":{{"original":"$http_user_agent"}},'
                '"event":{{"duration":"$request_time"}}}}';
              access_log {work}/nginx-access.jsonl ecs;
              upstream puma {{ server 127.0.0.1:{upstream_port}; keepalive 16; }}
              server {{
                listen 127.0.0.1:{port};
                location / {{
                  proxy_pass http://puma;
                  proxy_http_version 1.1;
                  proxy_set_header Connection "";
                  proxy_set_header Host $host;
                  proxy_set_header X-Forwarded-For $remote_addr;
                  proxy_set_header X-Request-Id $request_id;
                }}
              }}
            }}
            """
        )
    )
    return start(["nginx", "-c", str(conf), "-e", str(work / "nginx-error.log")], port)


def wrk(port: int, duration: int, connections: int, threads: int = 1) -> Result:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]

    def pct(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return Result(rps, pct("50"), pct("99"), requests)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    args = parser.parse_args()
    for tool in ("puma", "nginx", "wrk"):
        if not shutil.which(tool):
            print(f"missing {tool}: apt-get install {tool}", file=sys.stderr)
            return 1

    work = Path(tempfile.mkdtemp(prefix="proxylog-bench-"))
    puma_port = free_port()
    puma = start(["puma", "-q", "-b", f"tcp://127.0.0.1:{puma_port}", "-t", "4:16", str(RACK_APP)], puma_port)
    upstream = f"http://127.0.0.1:{puma_port}"
    config = work / "proxylog.yaml"
    config.write_text(
        f"sinks: [{{type: file, path: {work}/proxylog-access.jsonl}}]\nstate_dir: {work}/state\n"
    )

    pack = work / "proxylog-pack.yaml"  # the shipped default: rule pack in monitor mode
    pack.write_text(f"{config.read_text()}rules: [{{include: {ROOT}/configs/rules/default.yaml}}]\n")
    configs = {}
    for engine in ("mitmproxy", "fast"):
        for name, base in (("plain", config), ("pack", pack)):
            configs[engine, name] = work / f"proxylog-{engine}-{name}.yaml"
            configs[engine, name].write_text(f"engine: {engine}\n{base.read_text()}")

    def proxylog(config: Path) -> Callable[[int], subprocess.Popen[bytes]]:
        def launch(port: int) -> subprocess.Popen[bytes]:
            cmd = [
                str(BIN / "proxylog"),
                "serve",
                "--config",
                str(config),
                "--upstream",
                upstream,
                "--listen",
                f"127.0.0.1:{port}",
            ]
            return start(cmd, port)

        return launch

    def mitmdump(port: int) -> subprocess.Popen[bytes]:
        cmd = [
            str(BIN / "mitmdump"),
            "-q",
            "--mode",
            f"reverse:{upstream}@127.0.0.1:{port}",
            "--set",
            "connection_strategy=lazy",
            "--set",
            f"confdir={work}/mitm",
        ]
        return start(cmd, port)

    def lean(kind: str) -> Callable[[int], subprocess.Popen[bytes]]:
        def launch(port: int) -> subprocess.Popen[bytes]:
            cmd = [PYTHON, str(BENCH / "lean_master.py"), kind, upstream, str(port), str(work / "state")]
            return start(cmd, port)

        return launch

    paths: dict[str, Callable[[int], subprocess.Popen[bytes] | None]] = {
        "Puma direct": lambda port: None,
        "nginx + JSON access log": lambda port: nginx(puma_port, port, work),
        "mitmdump (no addons)": mitmdump,
        "lean Master, plain (no addon)": lean("plain"),
        "lean Master, cached dispatch (no addon)": lean("cached"),
        "proxylog serve, mitmproxy (file sink)": proxylog(configs["mitmproxy", "plain"]),
        "proxylog serve, mitmproxy (file sink, default rule pack)": proxylog(configs["mitmproxy", "pack"]),
        "proxylog serve, fast (file sink)": proxylog(configs["fast", "plain"]),
        "proxylog serve, fast (file sink, default rule pack)": proxylog(configs["fast", "pack"]),
    }
    results: dict[str, list[Result]] = {name: [] for name in paths}
    try:
        for round_no in range(args.rounds):
            for name, launch in paths.items():
                port = puma_port if name == "Puma direct" else free_port()
                proc = launch(port)
                try:
                    wrk(port, 2, args.connections)  # warm-up
                    pid = (proc or puma).pid
                    cpu_before = cpu_seconds(pid)
                    result = wrk(port, args.duration, args.connections)
                    result.cpu_us = (cpu_seconds(pid) - cpu_before) / result.requests * 1e6
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
    base_mitm = median["mitmdump (no addons)"].rps
    base_lean = median["lean Master, cached dispatch (no addon)"].rps
    print(
        f"\nwrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} interleaved rounds, median round; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores\n"
    )
    cpu = {name: statistics.median(r.cpu_us or 0 for r in rs) for name, rs in results.items()}
    print("| path | req/s | p50 ms | p99 ms | x mitmdump req/s | x lean Master req/s | proxy CPU µs/req |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in median.items():
        print(
            f"| {name} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.rps / base_mitm:.2f} | {r.rps / base_lean:.2f} | {cpu[name]:,.0f} |"
        )
    lean_cpu = cpu["lean Master, cached dispatch (no addon)"]
    proxylog_cpu = cpu["proxylog serve, mitmproxy (file sink)"]
    fast = median["proxylog serve, fast (file sink, default rule pack)"]
    mitm = median["proxylog serve, mitmproxy (file sink, default rule pack)"]
    print(
        f"\nproxylog (mitmproxy) CPU per request vs lean Master: {proxylog_cpu / lean_cpu:.3f}x "
        f"(+{proxylog_cpu - lean_cpu:.0f} µs); "
        f"vs mitmdump: {cpu['mitmdump (no addons)'] / proxylog_cpu:.2f}x less"
    )
    print(f"fast plane vs mitmproxy plane, default rule pack: {fast.rps / mitm.rps:.2f}x req/s")
    spread = {name: [round(r.rps) for r in rs] for name, rs in results.items()}
    print(f"all rounds (req/s): {spread}")
    print("(Puma direct: the CPU column is Puma's own; nginx: nginx's single worker.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
