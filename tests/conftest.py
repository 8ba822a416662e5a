"""Real components for tests: Puma serving tests/upstream/config.ru, and proxylog itself."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RACK_APP = ROOT / "tests" / "upstream" / "config.ru"
STARTUP_TIMEOUT = 20.0


def corpora_dir() -> Path:
    """The shared test corpora: $PROXYLOG_TEST_DATA, else ../shared/data, else the copy in
    tests/data/corpora.tar.gz extracted once into a temporary directory."""
    import hashlib
    import tarfile
    import tempfile

    if env := os.environ.get("PROXYLOG_TEST_DATA"):
        return Path(env)
    shared = ROOT.parent / "shared" / "data"
    if (shared / "crowdsec-hub").is_dir():
        return shared
    archive = ROOT / "tests" / "data" / "corpora.tar.gz"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"proxylog-corpora-{digest}"
    if not (target / "README.md").is_file():
        staging = Path(tempfile.mkdtemp(prefix="proxylog-corpora-"))
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        with contextlib.suppress(OSError):  # another test process got there first
            staging.rename(target)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Puma:
    """Debian's puma serving the echo app on a free loopback port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            ["puma", "-q", "-b", f"tcp://127.0.0.1:{self.port}", "-t", "4:16", str(RACK_APP)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=RACK_APP.parent,
        )
        wait_for_port(self.port)

    def seen(self, prefix: str = "") -> list[str]:
        """Every path (with query) this Puma received, in order, filtered by `prefix`."""
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/__seen", timeout=10) as response:
            return [p for p in orjson.loads(response.read()) if p.startswith(prefix)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Proxylog:
    """A real `proxylog serve` subprocess with a file sink the test can read back."""

    def __init__(self, workdir: Path, config: dict[str, Any], args: list[str], stdout: Any) -> None:
        self.records_path = workdir / "access.jsonl"
        config = {"sinks": [{"type": "file", "path": str(self.records_path)}], **config}
        config.setdefault("listen", "127.0.0.1:0")
        config.setdefault("state_dir", str(workdir / "state"))
        self.control_socket = Path(
            config.get("control", {}).get("socket") or Path(config["state_dir"]) / "control.sock"
        )
        self.config_path = workdir / "proxylog.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.stderr_lines: list[str] = []
        self._listening = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxylog.cli", "serve", "--config", str(self.config_path), *args],
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.port = 0
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._listening.wait(STARTUP_TIMEOUT):
            self.close()  # the pipes too: a half-started process must not leak them
            raise RuntimeError("proxylog did not start:\n" + "\n".join(self.stderr_lines))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stderr_lines.append(line)
            if line.startswith("proxylog: listening on ") and not self._listening.is_set():
                self.port = int(line.split()[3].split(",")[0].rsplit(":", 1)[1])
                self._listening.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def records(self, count: int | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The records written so far; with `count`, wait until there are at least that many
        and fail (showing what was there) if they do not come within `timeout`."""
        return self._wait(lambda: self._read(), count, timeout)

    def access(self, count: int | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Only the access records (no markers, audits or alerts); with `count`, as `records`."""
        return self._wait(lambda: [r for r in self._read() if "url" in r], count, timeout)

    def _read(self) -> list[dict[str, Any]]:
        lines = self.records_path.read_bytes().splitlines() if self.records_path.exists() else []
        return [orjson.loads(line) for line in lines]

    @staticmethod
    def _wait(
        read: Callable[[], list[dict[str, Any]]], count: int | None, timeout: float
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            records = read()
            if count is None or len(records) >= count:
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(records)} records after {timeout:g} s, not {count}: {records}")
            time.sleep(0.02)

    def rss_kib(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """Kill if still running and close the pipes (fixture teardown)."""
        self.kill()
        self._reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture(scope="session")
def puma() -> Iterator[Puma]:
    server = Puma()
    yield server
    server.stop()


# The data planes every end-to-end behaviour runs on; `@pytest.mark.engines("mitmproxy")`
# narrows a test to the engines it applies to (its docstring says why).
ENGINES = ("mitmproxy", "fast")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("engines")
        metafunc.parametrize("engine", marker.args if marker else ENGINES)


@pytest.fixture
def start_proxylog(tmp_path: Path, puma: Puma, engine: str) -> Iterator[Any]:
    """Factory: start_proxylog(config={...}, args=[...]) → a running Proxylog in front of Puma,
    on the test's `engine` (unless the config names one)."""
    started: list[Proxylog] = []

    def start(
        config: dict[str, Any] | None = None, args: list[str] | None = None, stdout: Any = None
    ) -> Proxylog:
        workdir = tmp_path / f"proxylog{len(started)}"
        workdir.mkdir()
        proc = Proxylog(
            workdir,
            {"upstream": puma.url, "engine": engine, **(config or {})},
            args or [],
            subprocess.DEVNULL if stdout is None else stdout,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


def records_for(records: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [r for r in records if r["http"]["request"]["id"] == request_id]


# Fixtures that start real servers or a proxylog process: a test using one is end-to-end
# (`pytest -m "not e2e"` is the fast loop without them).
E2E_FIXTURES = frozenset({"puma", "start_proxylog", "rsyslog", "redis_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
