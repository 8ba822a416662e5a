"""The deploy/ folder, exercised: the systemd unit verifies, logrotate rotates a live
proxylog's file without losing or duplicating a record, the container's config and
HEALTHCHECK work, the example configs are valid."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from proxylog.config import load_config
from tests._http import request
from tests.conftest import ROOT, Puma, free_port, wait_for_port

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "proxylog.service"
INSTALLED = "/opt/proxylog/.venv/bin/proxylog"
# `proxylog` as this test run has it: the worktree's package under this interpreter.
PROXYLOG = [sys.executable, "-m", "proxylog.cli"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _proxylog_executable(tmp_path: Path) -> Path:
    """An executable standing in for the installed `proxylog` (systemd checks it exists)."""
    script = tmp_path / "proxylog"
    script.write_text(f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m proxylog.cli "$@"\n')
    script.chmod(0o755)
    return script


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    result = subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)
    if "Failed to initialize" in result.stderr or "System has not been booted" in result.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr.strip()}")
    return result


def test_the_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single warning, it reloads through
    `ctl reload`, has its runtime and state directories, and its exposure is low."""
    text = UNIT.read_text()
    # KillMode=mixed: SIGTERM to the supervisor only, which drains its workers.
    for key in (
        "RuntimeDirectory=proxylog",
        "StateDirectory=proxylog",
        "NoNewPrivileges=true",
        "KillMode=mixed",
    ):
        assert key in text
    assert re.search(r"^ExecReload=\S+ ctl --config \S+ reload$", text, re.M)
    unit = tmp_path / "proxylog.service"
    unit.write_text(text.replace(INSTALLED, str(_proxylog_executable(tmp_path))))
    verified = _analyze("verify", "--man=no", str(unit))
    assert verified.returncode == 0 and not verified.stdout.strip() and not verified.stderr.strip(), (
        verified.stdout + verified.stderr
    )
    security = _analyze("security", "--offline=true", str(unit))
    level = re.search(r"Overall exposure level for proxylog.service: ([0-9.]+)", security.stdout)
    assert level is not None, security.stdout + security.stderr
    assert float(level.group(1)) <= 2.0, security.stdout  # systemd rates up to 1.9 "OK"


def test_a_broken_unit_does_not_verify(tmp_path: Path) -> None:
    """The verification is real: a misspelt key fails it."""
    unit = tmp_path / "proxylog.service"
    text = UNIT.read_text().replace(INSTALLED, str(_proxylog_executable(tmp_path)))
    unit.write_text(text.replace("ExecReload=", "ExecReloadd="))
    verified = _analyze("verify", "--man=no", str(unit))
    assert "ExecReloadd" in verified.stderr


def _send(url: str, paths: list[str]) -> None:
    for path in paths:
        assert request(url, path).status == 200


def test_logrotate_with_ctl_reopen_loses_and_duplicates_nothing(start_proxylog, tmp_path: Path) -> None:
    """`logrotate -f` with the shipped snippet rotates a live proxylog's file sink under
    traffic: every request is in exactly one of the files, the later ones in the new file."""
    if shutil.which("logrotate") is None:
        pytest.skip("logrotate is not installed (Debian: apt-get install logrotate)")
    logs = tmp_path / "log"
    logs.mkdir()
    live = logs / "access.jsonl"
    proxy = start_proxylog({"sinks": [{"type": "file", "path": str(live)}]})
    snippet = (DEPLOY / "logrotate" / "proxylog").read_text()
    ctl = f"{' '.join(PROXYLOG)} ctl --config {proxy.config_path} reopen"
    snippet = snippet.replace("/var/log/proxylog", str(logs)).replace("su proxylog proxylog", "su root root")
    snippet = re.sub(r"\S+proxylog ctl --config \S+ reopen", ctl, snippet)
    conf = tmp_path / "logrotate.conf"
    conf.write_text(snippet)
    conf.chmod(0o644)
    before = [f"/rot/before/{i}" for i in range(200)]
    during = [f"/rot/during/{i}" for i in range(300)]
    _send(proxy.url, before)
    sender = threading.Thread(target=_send, args=(proxy.url, during))
    sender.start()
    rotated = subprocess.run(
        ["logrotate", "-f", "-v", "-s", str(tmp_path / "logrotate.state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    sender.join(120)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    after = [f"/rot/after/{i}" for i in range(50)]
    _send(proxy.url, after)
    assert proxy.stop() == 0
    old = [p for p in logs.iterdir() if p != live]
    assert len(old) == 1 and not old[0].name.endswith(".gz"), old  # delaycompress
    paths: dict[str, list[str]] = {}
    for file in (old[0], live):
        paths[file.name] = [
            doc["url"]["path"] for doc in map(orjson.loads, file.read_bytes().splitlines()) if "url" in doc
        ]
    everything = paths[old[0].name] + paths[live.name]
    assert sorted(everything) == sorted(before + during + after)  # none lost, none twice
    assert set(before) <= set(paths[old[0].name]) and set(after) <= set(paths[live.name])


def _container_file() -> dict[str, list[str]]:
    instructions: dict[str, list[str]] = {}
    text = (DEPLOY / "container" / "Containerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            instructions.setdefault(word, []).append(rest.strip())
    return instructions


def _container_etc(tmp_path: Path) -> Path:
    """The image's /etc/proxylog, laid out as the Containerfile copies it."""
    etc = tmp_path / "etc"
    for pack in ("rules", "intel"):
        shutil.copytree(ROOT / "configs" / pack, etc / pack)
    shutil.copy(DEPLOY / "container" / "proxylog.yaml", etc / "proxylog.yaml")
    return etc / "proxylog.yaml"


def test_the_containerfile_is_a_slim_non_root_image_with_volumes() -> None:
    """Python 3.13 slim base, a non-root user, the config and state as volumes, a
    HEALTHCHECK, and every file it copies exists."""
    ins = _container_file()
    assert ins["FROM"] == ["python:3.13-slim"]
    assert ins["USER"] == ["proxylog"]
    volumes = orjson.loads(ins["VOLUME"][0])
    assert {"/etc/proxylog", "/var/lib/proxylog"} <= set(volumes)
    assert "ctl" in ins["HEALTHCHECK"][0]
    for copy in ins["COPY"]:
        *sources, _ = copy.split()
        for source in sources:
            assert (ROOT / source).exists(), source


def test_the_container_config_serves_and_its_healthcheck_tells_up_from_down(
    tmp_path: Path, puma: Puma
) -> None:
    """The image's config, laid out as the image lays it out, starts with the image's
    environment, and the HEALTHCHECK command passes while it serves and fails once stopped."""
    config = _container_etc(tmp_path)
    env = {**ENV, "STATE_DIRECTORY": str(tmp_path / "state"), "RUNTIME_DIRECTORY": str(tmp_path / "run")}
    port = free_port()
    healthcheck = orjson.loads(_container_file()["HEALTHCHECK"][0].split("CMD", 1)[1])
    assert healthcheck[0] == "proxylog"
    image_config = "/etc/proxylog/proxylog.yaml"
    health = [*PROXYLOG, *[arg.replace(image_config, str(config)) for arg in healthcheck[1:]]]
    serve = subprocess.Popen(
        [*PROXYLOG, "serve", "-c", str(config), "--listen", f"127.0.0.1:{port}", "--upstream", puma.url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port)
        assert (tmp_path / "run" / "control.sock").exists()  # $RUNTIME_DIRECTORY, as in the image
        up = subprocess.run(health, env=env, capture_output=True, text=True, timeout=60)
        assert up.returncode == 0, up.stderr
        assert request(f"http://127.0.0.1:{port}", "/").status == 200
    finally:
        serve.terminate()
        assert serve.wait(60) == 0
        assert serve.stderr is not None
        serve.stderr.close()
    down = subprocess.run(health, env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 3, down.stderr


@pytest.mark.parametrize("example", ["container/proxylog.yaml", "nginx/proxylog.yaml", "alb/proxylog.yaml"])
def test_the_example_configs_are_valid(example: str, tmp_path: Path) -> None:
    """Each example config loads; the ones behind a proxy trust only narrow ranges."""
    path = _container_etc(tmp_path) if example.startswith("container/") else DEPLOY / example
    config = load_config(path)
    assert config.trusted_proxies
    assert all(net.prefixlen >= 8 for net in config.trusted_proxies)


def test_the_nginx_example_passes_nginx_t(tmp_path: Path) -> None:
    """`nginx -t` accepts the server block inside a minimal http {} block."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed")
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\naccess_log off;\nclient_body_temp_path {tmp_path};\nproxy_temp_path {tmp_path};\n"
        f"include {DEPLOY / 'nginx' / 'proxylog.conf'};\n}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def _ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [*PROXYLOG, "ctl", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env or ENV)


def test_ctl_finds_the_instance_of_its_config_and_refuses_another(start_proxylog) -> None:
    """`ctl --config A` talks to A's instance; pointed (by --socket or $RUNTIME_DIRECTORY) at
    an instance serving another config, it refuses with exit 3 and names both."""
    a, b = start_proxylog(), start_proxylog()
    status = orjson.loads(_ctl("--config", str(a.config_path), "--json", "status").stdout)
    assert status["config_path"] == str(a.config_path.resolve())
    stats = _ctl("--config", str(a.config_path), "stats")
    assert stats.returncode == 0 and "requests:" in stats.stdout and "sinks:" in stats.stdout
    assert not stats.stdout.lstrip().startswith("{")  # a human form; --json gives the JSON
    wrong = _ctl("--config", str(b.config_path), "--socket", str(a.control_socket), "status")
    assert wrong.returncode == 3
    assert str(b.config_path.resolve()) in wrong.stderr and str(a.config_path.resolve()) in wrong.stderr
    env = {**ENV, "RUNTIME_DIRECTORY": str(a.control_socket.parent)}
    # b's file names its state_dir, so b's socket is found after a's is refused
    found = orjson.loads(_ctl("--config", str(b.config_path), "--json", "status", env=env).stdout)
    assert found["config_path"] == str(b.config_path.resolve())
    b.stop()
    gone = _ctl("--config", str(b.config_path), "status", env=env)
    assert gone.returncode == 3 and "pass --socket" in gone.stderr
