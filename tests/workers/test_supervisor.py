"""`proxylog serve --workers 2` end to end: one port, one control socket, one metrics
endpoint, a worker killed and replaced, drained on SIGTERM, reloaded all or none.

Several workers need the fast plane (its listener shares the port with SO_REUSEPORT), so
these tests run on it only; the refusal for mitmproxy is tested too.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests._http import request
from tests.conftest import Proxylog, free_port
from tests.ops.test_control import ctl, ctl_json, wait_until
from tests.workers.conftest import worker_records

PROBE = [
    {
        "id": "probe",
        "when": {"path": "^/w-probe"},
        "threshold": 1,
        "window": "60s",
        "action": "block",
        "ban": "5m",
    }
]


def worker_of(proxy: Proxylog, conn: http.client.HTTPConnection) -> int:
    """Which worker serves a kept-alive connection: the one whose file has its client port."""
    port = conn.sock.getsockname()[1]

    def find() -> list[int]:
        return [
            index
            for index in (0, 1)
            if any(r.get("client", {}).get("port") == port for r in worker_records(proxy, index))
        ]

    [index] = wait_until(find)
    return index


def get(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.status


def pids(proxy: Proxylog) -> list[int]:
    return [w["pid"] for w in ctl_json(proxy, "status")["workers"]]


def test_two_workers_serve_one_port_each_with_its_own_file(start_workers) -> None:
    """Connections spread over both workers; every request has exactly one record, in the
    file of the worker that served it; status shows both workers."""
    proxy = start_workers()
    statuses = [request(proxy.url, f"/w-spread/{i}").status for i in range(40)]
    assert statuses == [200] * 40
    wait_until(lambda: len([r for r in worker_records(proxy) if "url" in r]) == 40)
    per_worker = [[r for r in worker_records(proxy, i) if "url" in r] for i in (0, 1)]
    paths = sorted(r["url"]["path"] for records in per_worker for r in records)
    assert paths == sorted(f"/w-spread/{i}" for i in range(40))
    assert all(per_worker), "the kernel gave every connection to one worker"
    status = ctl_json(proxy, "status")
    assert [w["index"] for w in status["workers"]] == [0, 1]
    assert all(w["ready"] for w in status["workers"]) and len(set(pids(proxy))) == 2
    human = ctl(proxy, "status").stdout
    assert "workers:" in human and "(worker 1)" in human


def test_stdout_carries_every_record_whole(start_workers, tmp_path: Path) -> None:
    """Records bigger than a pipe's atomic write (4 KiB), from both workers at once, reach the
    supervisor's stdout as whole lines: none torn, none interleaved, none lost."""
    out = (tmp_path / "stdout.jsonl").open("wb")
    proxy = start_workers({"sinks": [{"type": "stdout"}], "record": {"max_field_bytes": 8192}}, stdout=out)
    pad = "a" * 6000

    def client(n: int) -> None:
        for i in range(25):
            assert request(proxy.url, f"/w-big/{n}/{i}?pad={pad}").status == 200

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert proxy.stop() == 0
    out.close()
    lines = (tmp_path / "stdout.jsonl").read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]  # a torn line would not parse
    access = [r for r in records if "url" in r]
    assert len(access) == 200 and max(len(line) for line in lines) > 4096
    assert {r["url"]["path"] for r in access} == {f"/w-big/{n}/{i}" for n in range(8) for i in range(25)}


def test_ctl_acts_on_every_worker_and_metrics_sum_them(start_workers) -> None:
    """`ctl ban` blocks on both workers, `ctl bans` is one list, `ctl mode` switches both,
    `ctl stats` and the one metrics endpoint count every worker's requests."""
    metrics_port = free_port()
    proxy = start_workers({"mode": "enforce", "metrics": {"listen": f"127.0.0.1:{metrics_port}"}})
    for i in range(30):
        assert request(proxy.url, f"/w-count/{i}").status == 200
    stats = wait_until(lambda: (s := ctl_json(proxy, "stats"))["requests"].get("2xx/allowed") == 30 and s)
    assert [w["index"] for w in stats["workers"]] == [0, 1]
    with urllib_open(f"http://127.0.0.1:{metrics_port}/metrics") as body:
        metrics = body
    assert 'proxylog_requests_total{action="allowed",status_class="2xx"} 30.0' in metrics
    assert 'proxylog_workers{state="ready"} 2.0' in metrics
    banned = ctl(proxy, "ban", "127.0.0.1", "--ttl", "5m")
    assert banned.returncode == 0, banned.stderr
    assert {request(proxy.url, f"/w-banned/{i}").status for i in range(20)} == {403}
    assert [b["key"] for b in ctl_json(proxy, "bans")["bans"]] == ["127.0.0.1"]
    assert ctl(proxy, "unban", "127.0.0.1").returncode == 0
    assert ctl(proxy, "mode", "monitor").returncode == 0
    assert {w["mode"] for w in ctl_json(proxy, "status")["workers"]} == {"monitor"}
    assert ctl_json(proxy, "mode") == {"ok": True, "mode": "monitor"}
    audits = [r for r in worker_records(proxy) if r["event"]["action"] == "audit.ban"]
    assert len(audits) == 2 and all("via the supervisor" in a["proxylog"]["audit"]["who"] for a in audits)


def urllib_open(url: str) -> Any:
    import contextlib
    import urllib.request

    @contextlib.contextmanager
    def opened() -> Any:
        with urllib.request.urlopen(url, timeout=10) as response:
            yield response.read().decode()

    return opened()


def test_a_ban_one_worker_makes_reaches_the_other(start_workers) -> None:
    """With the memory backend the supervisor shares bans: a probe served by one worker bans
    the client on both, within about a second."""
    proxy = start_workers({"mode": "enforce", "rules": PROBE})
    assert request(proxy.url, "/w-probe").status == 403
    wait_until(lambda: all(w["bans"] == 1 for w in ctl_json(proxy, "status")["workers"]))
    assert {request(proxy.url, f"/w-after/{i}").status for i in range(20)} == {403}
    assert len(ctl_json(proxy, "bans")["bans"]) == 1


def test_a_killed_worker_is_replaced_and_the_other_keeps_its_connections(start_workers) -> None:
    """kill -9 of one worker: the supervisor starts a new one (a `worker.restarted` record,
    a restart in status and metrics), and the other worker's kept-alive connections never
    notice."""
    proxy = start_workers()
    conns = [http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10) for _ in range(12)]
    for i, conn in enumerate(conns):
        assert get(conn, f"/w-keep/{i}") == 200
    served_by = [worker_of(proxy, conn) for conn in conns]
    assert set(served_by) == {0, 1}
    victim = ctl_json(proxy, "status")["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    for round_ in range(5):
        for i, conn in enumerate(conns):
            if served_by[i] == 1:
                assert get(conn, f"/w-keep/{i}/{round_}") == 200
    status = wait_until(lambda: (s := ctl_json(proxy, "status"))["workers"][0]["ready"] and s)
    replaced = status["workers"][0]
    assert replaced["pid"] != victim and replaced["restarts"] == 1 and "SIGKILL" in replaced["last_exit"]
    restarted = wait_until(
        lambda: [r for r in worker_records(proxy, 0) if r["event"]["action"] == "worker.restarted"]
    )
    assert restarted[0]["proxylog"]["worker"]["pid"] == victim
    assert any("[worker 0] proxylog: worker 0 restarted" in line for line in proxy.stderr_lines)
    assert {request(proxy.url, f"/w-new/{i}").status for i in range(20)} == {200}
    for conn in conns:
        conn.close()


def test_sigterm_drains_every_worker(start_workers, puma) -> None:
    """SIGTERM to the supervisor: requests in flight on both workers finish with 200 and are
    recorded, then everything exits 0."""
    proxy = start_workers()
    results: list[int] = []
    conns = [http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=20) for _ in range(10)]
    for i, conn in enumerate(conns):
        assert get(conn, f"/w-pre/{i}") == 200
    assert {worker_of(proxy, conn) for conn in conns} == {0, 1}

    def slow(conn: http.client.HTTPConnection) -> None:
        results.append(get(conn, "/slow?s=1.5"))

    threads = [threading.Thread(target=slow, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    time.sleep(0.5)
    workers = pids(proxy)
    assert proxy.stop() == 0
    for t in threads:
        t.join()
    assert results == [200] * 10
    slow_records = [r for r in worker_records(proxy) if r.get("url", {}).get("path") == "/slow"]
    assert len(slow_records) == 10
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_a_reload_is_validated_once_and_applies_to_all_or_none(start_workers) -> None:
    """A broken config is refused by the supervisor and no worker reloads; a good one is
    reloaded by every worker (each audits it)."""
    proxy = start_workers()
    good = proxy.config_path.read_text()
    proxy.config_path.write_text(good + "rules: [{id: x, when: {path: '('}, action: tag}]\n")
    refused = ctl(proxy, "reload")
    assert refused.returncode == 1 and "rules" in refused.stderr
    assert not [r for r in worker_records(proxy) if r["event"]["action"] == "audit.reload"]
    data = yaml.safe_load(good)
    proxy.config_path.write_text(yaml.safe_dump({**data, "rules": PROBE}))
    proxy.proc.send_signal(signal.SIGHUP)  # validated once, then every worker reloads

    def reloads() -> list[dict[str, Any]]:
        return [r for r in worker_records(proxy) if r["event"]["action"] == "audit.reload"]

    assert len(wait_until(lambda: len(reloads()) == 2 and reloads())) == 2
    assert ctl(proxy, "reload").returncode == 0
    assert len(wait_until(lambda: len(reloads()) == 4 and reloads())) == 4


def test_workers_die_with_their_supervisor(start_workers) -> None:
    """A supervisor killed with SIGKILL leaves no worker behind: each notices, drains, exits."""
    proxy = start_workers()
    workers = pids(proxy)
    proxy.kill()
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), timeout=20)


def test_shared_state_changes_go_through_redis(start_workers, redis_server) -> None:
    """With `state: {backend: redis}` a change is made on one worker and Redis carries it to
    the other, as it would to another host."""
    proxy = start_workers({"state": {"backend": "redis", "url": redis_server.url}})
    assert ctl(proxy, "mode", "enforce").returncode == 0
    wait_until(lambda: {w["mode"] for w in ctl_json(proxy, "status")["workers"]} == {"enforce"})
    assert ctl(proxy, "ban", "127.0.0.1").returncode == 0
    wait_until(lambda: all(w["bans"] == 1 for w in ctl_json(proxy, "status")["workers"]))
    assert {request(proxy.url, f"/w-redis/{i}").status for i in range(20)} == {403}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "2", "--engine", "mitmproxy"], "workers: 2 workers need the fast engine"),
        (["--workers", "2", "--listen", "127.0.0.1:0"], "workers: several workers need a fixed listen port"),
        (["--workers", "0"], "--workers: must be between 1 and 64"),
    ],
)
def test_workers_that_cannot_run_are_refused_naming_the_key(
    args: list[str], message: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxylog.cli", "serve", "--upstream", "http://127.0.0.1:9", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path)},
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_check_refuses_workers_the_engine_cannot_run(tmp_path: Path) -> None:
    config = tmp_path / "proxylog.yaml"
    config.write_text(
        yaml.safe_dump(
            {"workers": 2, "engine": "mitmproxy", "listen": "127.0.0.1:8080", "state_dir": str(tmp_path)}
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "proxylog.cli", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "workers: 2 workers need the fast engine" in done.stderr


def test_a_restarted_worker_is_given_what_changed_while_it_was_down(start_workers) -> None:
    """Memory backend: an allowlist entry and a ban made while worker 0 is dead reach only
    worker 1; the supervisor gives them to the new worker 0 once it listens."""
    from proxylog.ops.client import ControlClient

    proxy = start_workers()
    victim = pids(proxy)[0]
    os.kill(victim, signal.SIGKILL)
    ctl(proxy, "allow", "add", "10.9.0.0/16")
    ctl(proxy, "ban", "198.51.100.23", "--ttl", "10m")
    wait_until(lambda: (w := ctl_json(proxy, "status")["workers"][0])["ready"] and w["pid"] != victim)
    worker0 = ControlClient(socket_path=str(proxy.control_socket.parent / "workers" / "0" / "control.sock"))

    def synced() -> bool:
        _, allow = worker0.call("GET", "/allow")
        _, bans = worker0.call("GET", "/bans")
        return "10.9.0.0/16" in allow["allow"] and [b["key"] for b in bans["bans"]] == ["198.51.100.23"]

    assert wait_until(synced)
