"""The syslog sink against a real rsyslogd on a loopback port: RFC 5424 fields, UDP, TCP with
octet counting, TLS, and reconnect-and-resend across receiver restarts (sequence-checked
through the real `proxylog serve`)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from proxylog.config.sinks import RetrySpec, SyslogSpec, TlsSpec
from proxylog.sinks import SinkWorker
from proxylog.sinks.syslog import SyslogSink
from tests._http import request
from tests._rsyslog import Rsyslog

RESEND = os.environ.get("PROXYLOG_TEST_RESEND", "1MB")  # set to 0 to watch the check catch losses


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path / "rsyslog")
    yield server
    server.close()


def line(i: int) -> bytes:
    return b'{"seq":%d,"msg":"caf\xc3\xa9 \\u001b ok"}\n' % i


def spec(transport: str, port: int, **kwargs: Any) -> SyslogSpec:
    return SyslogSpec(type="syslog", name="s", transport=transport, host="127.0.0.1", port=port, **kwargs)  # type: ignore[arg-type]


def seqs(messages: list[dict[str, Any]]) -> set[int]:
    return {m["seq"] for m in messages if "seq" in m}


def test_messages_are_rfc5424_with_the_record_as_msg(rsyslog: Rsyslog) -> None:
    """rsyslog parses facility, severity, host, app, procid, msgid and sequenceId; MSG is the JSON record."""
    sink = SyslogSink(spec("tcp", rsyslog.port, facility=17, severity=5, hostname="edge-1"))
    sink.write([line(1), line(2)])
    sink.close()
    messages = rsyslog.wait_for(lambda m: len(m) >= 2)
    assert messages == [{"seq": 1, "msg": "café \x1b ok"}, {"seq": 2, "msg": "café \x1b ok"}]
    fields = rsyslog.meta.read_text().splitlines()
    assert fields[0] == f'local1 notice edge-1 proxylog {os.getpid()} access [meta sequenceId="1"]'
    assert fields[1].endswith('[meta sequenceId="2"]')


def test_udp_delivers_datagrams(rsyslog: Rsyslog) -> None:
    """Over UDP each record is one datagram."""
    sink = SyslogSink(spec("udp", rsyslog.port))
    for start in range(0, 200, 20):
        sink.write([line(i) for i in range(start, start + 20)])
    sink.close()
    assert seqs(rsyslog.wait_for(lambda m: len(m) >= 200)) == set(range(200))


def test_tls_delivers_to_a_verified_receiver(tmp_path: Path) -> None:
    """tls:// connects with the configured CA and server name, framing as over TCP."""
    server = Rsyslog(tmp_path / "tls", tls=True)
    try:
        assert server.cert is not None
        tls = TlsSpec(ca=str(server.cert), server_name="localhost")
        sink = SyslogSink(spec("tls", server.port, tls=tls))
        sink.write([line(i) for i in range(50)])
        sink.close()
        assert seqs(server.wait_for(lambda m: len(m) >= 50)) == set(range(50))
    finally:
        server.close()


async def test_a_receiver_restart_reconnects_and_resends(rsyslog: Rsyslog, tmp_path: Path) -> None:
    """Between batches rsyslog restarts; the sink notices the dead connection, reconnects and resends its
    window: nothing is missing (duplicates are allowed)."""
    syslog_spec = spec(
        "tcp", rsyslog.port, spool=str(tmp_path / "spool"), retry=RetrySpec(initial=0.05, max=0.3)
    )
    sink = SyslogSink(syslog_spec)
    worker = SinkWorker(sink, syslog_spec)
    worker.start()
    for round_ in range(3):
        for i in range(round_ * 100, round_ * 100 + 100):
            worker.submit(line(i))
        assert await worker.flush(30)
        await asyncio.to_thread(rsyslog.restart)
    assert await worker.flush(30)
    worker.submit(line(300))
    assert await worker.flush(30)
    await worker.close(5)
    messages = await asyncio.to_thread(rsyslog.wait_for, lambda m: seqs(m) >= set(range(301)))
    assert seqs(messages) == set(range(301))
    assert sink.connects >= 3


def test_five_rsyslog_restarts_mid_run_lose_nothing(start_proxylog: Any, tmp_path: Path) -> None:
    """Sequence check through proxylog serve: requests keep flowing while rsyslog restarts 5 times;
    afterwards rsyslog holds every request's record."""
    server = Rsyslog(tmp_path / "restarts")
    try:
        sink = {
            "type": "syslog",
            "address": f"tcp://{server.address}",
            "retry": {"initial": "50ms", "max": "500ms"},
            "spool": str(tmp_path / "spool"),
            "resend": RESEND,
        }
        proxy = start_proxylog({"sinks": [sink]})
        restarts_done = threading.Event()

        def restarter() -> None:
            for _ in range(5):
                time.sleep(0.4)
                server.restart(down_for=0.3)
            restarts_done.set()

        sent: list[int] = []
        thread = threading.Thread(target=restarter)
        with ThreadPoolExecutor(4) as pool:
            thread.start()
            while not restarts_done.is_set() or len(sent) < 400:
                chunk = list(range(len(sent), len(sent) + 20))
                assert list(pool.map(lambda n: request(proxy.url, f"/seq/{n}").status, chunk)) == [200] * 20
                sent += chunk
        thread.join()
        messages = server.wait_for(lambda m: _seq_paths(m) >= set(sent), timeout=60)
        assert server.starts == 6
        missing = set(sent) - _seq_paths(messages)
        assert not missing, (
            f"{len(missing)} of {len(sent)} records never reached rsyslog: {sorted(missing)[:20]}"
        )
        assert proxy.stop() == 0
    finally:
        server.close()


def _seq_paths(messages: list[dict[str, Any]]) -> set[int]:
    return {int(m["url"]["path"].rsplit("/", 1)[1]) for m in messages if "url" in m}
