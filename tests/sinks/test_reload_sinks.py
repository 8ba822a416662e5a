"""Reloads that touch the sinks, through a real `proxylog serve` in front of real Puma: a
reload that cannot start a sink changes nothing, a replaced sink never shares its file with
its successor, and a removed sink's undelivered records are announced."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import yaml

from proxylog.config import load_config
from proxylog.runtime import Runtime
from proxylog.sinks import SinkWorker
from tests._http import request
from tests._records import request_headers
from tests.conftest import free_port
from tests.ops.test_control import ctl, documents


def edit_config(proxy: Any, edit: Any) -> None:
    config = yaml.safe_load(proxy.config_path.read_text())
    edit(config)
    proxy.config_path.write_text(yaml.safe_dump(config))


def test_a_reload_that_cannot_start_a_sink_changes_nothing(tmp_path: Path, start_proxylog) -> None:
    """The new file is valid YAML, but a new sink's token file is unreadable: the reload fails
    naming it, and nothing of the new file applies (here: a new redacted header)."""
    proxy = start_proxylog({"record": {"headers": ["referer"]}})

    def edit(config: dict[str, Any]) -> None:
        config["redact"] = {"headers": ["referer"]}
        config["sinks"].append(
            {"type": "http", "url": f"http://127.0.0.1:{free_port()}/", "token_file": str(tmp_path / "nope")}
        )

    edit_config(proxy, edit)
    result = ctl(proxy, "reload")
    assert result.returncode == 1, result.stdout
    assert "token_file" in result.stderr and "unchanged" in result.stderr
    request(proxy.url, "/still-old", headers=[("Referer", "https://r.example/")])
    [record] = [r for r in proxy.access(count=1) if r["url"]["path"] == "/still-old"]
    assert request_headers(record) == {"referer": "https://r.example/"}
    [audit] = documents(proxy, "audit.reload")
    assert audit["proxylog"]["audit"]["ok"] is False
    assert "token_file" in audit["proxylog"]["audit"]["error"]


def test_a_replaced_integrity_sink_keeps_one_valid_chain_under_load(tmp_path: Path, start_proxylog) -> None:
    """Changing a chained file sink's settings mid-load: the old worker flushes and closes
    before the new one writes, so the file verifies and holds every request exactly once."""
    key = tmp_path / "chain.key"
    key.write_bytes(b"k" * 32 + b"\n")
    path = tmp_path / "chained.jsonl"
    sink = {"type": "file", "path": str(path), "integrity": {"key_file": str(key)}}
    proxy = start_proxylog({"sinks": [sink]})
    sent: list[str] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        for i in range(150):
            request_id = f"w{worker}-{i}"
            request(proxy.url, f"/load/{request_id}", headers=[("X-Request-Id", request_id)])
            with lock:
                sent.append(request_id)

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    while len(sent) < 100:
        threading.Event().wait(0.01)
    edit_config(proxy, lambda config: config["sinks"][0].update(batch=7))
    reload = ctl(proxy, "reload")
    for thread in clients:
        thread.join()
    assert reload.returncode == 0, reload.stderr
    assert proxy.stop() == 0

    verify = subprocess.run(
        [sys.executable, "-m", "proxylog.cli", "verify", "--key-file", str(key), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    ids = [
        r["http"]["request"]["id"]
        for r in map(orjson.loads, path.read_bytes().splitlines())
        if "url" in r and r["url"]["path"].startswith("/load/")
    ]
    assert sorted(ids) == sorted(sent) and len(sent) == 600


def test_removing_a_sink_with_a_backlog_announces_what_it_left(start_proxylog) -> None:
    """A sink whose collector is down holds its records in the spool; removing it by reload
    says how many records it left and where, in the reply and in the audit record."""
    dead = {"type": "http", "name": "collector", "url": f"http://127.0.0.1:{free_port()}/"}
    proxy = start_proxylog()
    edit_config(proxy, lambda config: config["sinks"].append(dead))
    assert ctl(proxy, "reload").returncode == 0
    for i in range(20):
        request(proxy.url, f"/held/{i}")
    proxy.access(count=20)
    edit_config(proxy, lambda config: config["sinks"].pop())
    result = ctl(proxy, "reload")
    assert result.returncode == 0, result.stderr
    audit = documents(proxy, "audit.reload")[-1]["proxylog"]["audit"]
    [stranded] = audit["stranded"]
    # the 20 records, and the audit of the reload that added the sink
    assert stranded["sink"] == "collector" and stranded["records"] == 21
    assert Path(stranded["spool"]).is_dir()
    assert (
        f"sink collector was removed with 21 records left in its spool {stranded['spool']}" in result.stdout
    )


def hold_close(worker: SinkWorker) -> tuple[asyncio.Event, asyncio.Event]:
    """Make `worker.close` wait: the first event is set once close is entered, and close
    goes on once the test sets the second."""
    closing, release = asyncio.Event(), asyncio.Event()
    close = worker.close

    async def held(timeout: float) -> int:
        closing.set()
        await release.wait()
        return await close(timeout)

    worker.close = held  # type: ignore[method-assign]
    return closing, release


async def test_reload_swaps_every_part_at_once_and_one_at_a_time(tmp_path: Path) -> None:
    """While a replaced sink is still flushing, requests already see the whole new config
    (record settings and redaction together); a second reload waits for the first, so the
    later file wins."""
    config_path = tmp_path / "proxylog.yaml"

    def write(headers: list[str], batch: int) -> None:
        sink = {"type": "file", "path": str(tmp_path / "access.jsonl"), "batch": batch}
        config = {"state_dir": str(tmp_path / "state"), "sinks": [sink]}
        config["record"] = {"headers": headers}
        config["redact"] = {"headers": [h for h in headers if h.startswith("x-")]}
        config_path.write_text(yaml.safe_dump(config))

    write(["referer", "x-pin"], batch=10)
    runtime = Runtime(load_config(config_path))
    runtime.start()
    [old] = runtime.workers
    closing, release = hold_close(old)
    write(["referer"], batch=7)  # a changed sink: its old worker must close first
    first = asyncio.create_task(runtime.reload("test"))
    await closing.wait()
    assert runtime.config.record.headers == ("referer",)
    assert runtime.redactor.spec == runtime.config.redact
    write(["referer", "x-later"], batch=7)
    second = asyncio.create_task(runtime.reload("test"))
    await asyncio.wait({second}, timeout=1.0)  # time to finish, were it not waiting
    assert not second.done(), "the second reload waits for the first"
    release.set()
    assert (await first).ok and (await second).ok
    assert runtime.config.record.headers == ("referer", "x-later")
    assert runtime.redactor.spec == runtime.config.redact
    await runtime.close(1)


async def test_shutting_down_during_a_reload_waits_for_the_replaced_sink(tmp_path: Path) -> None:
    """close() during a reload lets the reload finish: the replaced sink's queued records
    are delivered, not left behind uncounted."""
    path = tmp_path / "access.jsonl"
    config_path = tmp_path / "proxylog.yaml"

    def write(batch: int) -> None:
        sink = {"type": "file", "path": str(path), "batch": batch}
        config_path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "sinks": [sink]}))

    write(10)
    runtime = Runtime(load_config(config_path))
    [old] = runtime.workers  # not started: its 50 records wait in its queue
    for i in range(50):
        old.submit(b'{"seq": %d}\n' % i)
    closing, release = hold_close(old)
    write(7)
    reload = asyncio.create_task(runtime.reload("test"))
    await closing.wait()
    shutdown = asyncio.create_task(runtime.close(5))
    await asyncio.wait({shutdown}, timeout=1.0)  # time to return, were it not waiting
    assert not shutdown.done(), "close waits for the reload in progress"
    release.set()
    assert (await reload).ok
    assert await shutdown == 0
    assert len(path.read_bytes().splitlines()) >= 50
