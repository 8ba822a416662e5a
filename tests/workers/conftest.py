"""`proxylog serve --workers N` for real: a supervisor and its worker processes, in front of
the session's Puma, on a fixed free port (SO_REUSEPORT needs one)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Proxylog, Puma, free_port
from tests.state.conftest import redis_server  # noqa: F401  (a fixture, for the shared-state test)


def worker_records(proxy: Proxylog, index: int | None = None) -> list[dict[str, Any]]:
    """The records in every worker's file (`access-w<index>.jsonl`), or in one worker's."""
    pattern = "access-w*.jsonl" if index is None else f"access-w{index}.jsonl"
    return [
        orjson.loads(line)
        for path in sorted(proxy.records_path.parent.glob(pattern))
        for line in path.read_bytes().splitlines()
    ]


@pytest.fixture
def start_workers(tmp_path: Path, puma: Puma) -> Iterator[Any]:
    """Factory: start_workers(config={...}, args=[...], workers=2) → a running supervisor."""
    started: list[Proxylog] = []

    def start(
        config: dict[str, Any] | None = None,
        args: list[str] | None = None,
        workers: int = 2,
        stdout: Any = None,
    ) -> Proxylog:
        import subprocess

        workdir = tmp_path / f"supervisor{len(started)}"
        workdir.mkdir()
        base = {
            "upstream": puma.url,
            "engine": "fast",
            "workers": workers,
            "listen": f"127.0.0.1:{free_port()}",
        }
        proc = Proxylog(workdir, {**base, **(config or {})}, args or [], stdout or subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(Exception):  # stopped as an operator would: workers drain too
            proc.stop()
        proc.close()
