"""A real rsyslogd for tests: its own config, work dir and free loopback port, never the system one.

It listens on TCP (plain, or TLS with the ossl driver) and UDP on the same port, and writes
the MSG part of every ``proxylog`` message, one per line, to `out`, and the RFC 5424 header
fields it parsed to `meta`.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import free_port, wait_for_port

MODULES = Path("/usr/lib/x86_64-linux-gnu/rsyslog")
CONFIG = """\
global(workDirectory="{work}" maxMessageSize="64k" {tls_global})
module(load="imtcp" {tls_module})
module(load="imudp")
input(type="imtcp" port="{port}" address="127.0.0.1")
input(type="imudp" port="{port}" address="127.0.0.1" rcvbufSize="8m")
template(name="msgonly" type="string" string="%msg%\\n")
template(name="fields" type="list") {{
  property(name="syslogfacility-text") constant(value=" ") property(name="syslogseverity-text")
  constant(value=" ") property(name="hostname") constant(value=" ") property(name="app-name")
  constant(value=" ") property(name="procid") constant(value=" ") property(name="msgid")
  constant(value=" ") property(name="structured-data") constant(value="\\n")
}}
if $app-name == "proxylog" then {{
  action(type="omfile" file="{out}" template="msgonly")
  action(type="omfile" file="{meta}" template="fields")
}} else {{
  action(type="omfile" file="{work}/internal.log")
}}
"""


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 (it is its own CA) and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class Rsyslog:
    """rsyslogd -n with a generated config; `restart()` stops and starts it on the same port."""

    def __init__(self, workdir: Path, *, tls: bool = False) -> None:
        if shutil.which("rsyslogd") is None:
            pytest.fail("rsyslogd is missing: install the Debian package rsyslog (make deps)")
        if tls and not (MODULES / "lmnsd_ossl.so").exists():
            pytest.skip("rsyslog's TLS driver is missing: install the Debian package rsyslog-openssl")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.out = workdir / "out.jsonl"
        self.meta = workdir / "meta.log"
        self.cert: Path | None = None
        tls_global = tls_module = ""
        if tls:
            self.cert, key = make_certificate(workdir)
            tls_global = (
                f'defaultNetstreamDriverCAFile="{self.cert}" defaultNetstreamDriverCertFile="{self.cert}" '
                f'defaultNetstreamDriverKeyFile="{key}"'
            )
            tls_module = 'streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon"'
        self.config = workdir / "rsyslog.conf"
        self.config.write_text(
            CONFIG.format(
                work=workdir,
                port=self.port,
                out=self.out,
                meta=self.meta,
                tls_global=tls_global,
                tls_module=tls_module,
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start()

    def start(self) -> None:
        with open(self.workdir / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen(
                ["rsyslogd", "-n", "-f", str(self.config), "-i", str(self.workdir / "rsyslogd.pid")],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=self.workdir,
            )
        self.starts += 1
        try:
            wait_for_port(self.port, timeout=20)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, down_for: float = 0.3) -> None:
        self.stop()
        time.sleep(down_for)  # a real outage: connects are refused meanwhile
        self.start()

    def messages(self) -> list[dict[str, Any]]:
        """The JSON records received so far (a torn last line, still being written, is skipped)."""
        if not self.out.exists():
            return []
        out = []
        for raw in self.out.read_bytes().splitlines():
            try:
                out.append(orjson.loads(raw.strip()))
            except orjson.JSONDecodeError:
                continue
        return out

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll the output until `predicate(messages)` holds; returns the messages either way."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.messages()
            if predicate(messages) or time.monotonic() > deadline:
                return messages
            time.sleep(0.05)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.stop()
