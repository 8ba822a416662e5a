"""The addon in-process with mitmproxy's own test tools (taddons, tflow), records in memory."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy.test import taddons, tflow

from proxylog.config import Config
from proxylog.mitm.addon import ProxyLog
from proxylog.runtime import Runtime
from proxylog.testing import MemorySink


@pytest.fixture
def memory_addon() -> tuple[ProxyLog, MemorySink]:
    sink = MemorySink()
    return ProxyLog(runtime=Runtime(Config(), sinks=[sink])), sink


async def test_a_flow_cycle_emits_one_record(memory_addon) -> None:
    """Cycling a complete flow through the hooks emits exactly one record for it."""
    addon, sink = memory_addon
    with taddons.context(addon) as tctx:
        addon.runtime.start()
        flow = tflow.tflow(resp=True)
        flow.request.headers["X_Forwarded_For"] = "6.6.6.6"
        await tctx.cycle(addon, flow)
        await addon.runtime.flush(5)
    assert addon.runtime.internal_errors == 0
    [doc] = sink.documents()
    assert doc["url"]["path"] == "/path"
    assert doc["http"]["response"]["status_code"] == 200
    assert doc["client"]["ip"] == flow.client_conn.peername[0]
    assert flow.request.headers["X-Forwarded-For"] == flow.client_conn.peername[0]
    assert "X_Forwarded_For" not in flow.request.headers
    assert flow.response.headers["X-Request-Id"] == doc["http"]["request"]["id"]


async def test_an_errored_flow_is_recorded_once(memory_addon) -> None:
    """A flow that ends in mitmproxy's error hook gets one record naming the error."""
    addon, sink = memory_addon
    with taddons.context(addon) as tctx:
        addon.runtime.start()
        flow = tflow.tflow(err=True)
        flow.server_conn.timestamp_tcp_setup = None
        await tctx.cycle(addon, flow)
        addon.error(flow)  # a second error hook must not add a record
        await addon.runtime.flush(5)
    assert addon.runtime.internal_errors == 0
    [doc] = sink.documents()
    assert doc["error"]["type"] == "upstream_connect"


def test_bad_config_path_is_an_options_error(tmp_path) -> None:
    """A config the addon cannot load is rejected as an OptionsError naming the key path."""
    from mitmproxy import exceptions

    bad = tmp_path / "bad.yaml"
    bad.write_text("timeouts: {upstream: soon}\n")
    addon = ProxyLog()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match=r"timeouts\.upstream"):
        tctx.configure(addon, proxylog_config=str(bad))


async def test_a_new_proxylog_config_is_a_reload_that_keeps_bans_and_the_mode(tmp_path) -> None:
    """Under mitmdump, pointing `proxylog_config` at another file goes through the reload
    path: the new file applies, and the bans and the operator's mode carry over."""
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(f"state_dir: {tmp_path}/state\nrecord: {{headers: [referer]}}\n")
    second.write_text(f"state_dir: {tmp_path}/state\nrecord: {{headers: [accept]}}\n")
    addon = ProxyLog()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, proxylog_config=str(first))
        runtime = addon.runtime
        assert runtime is not None and runtime.config.record.headers == ("referer",)
        runtime.engine.ban("192.0.2.9", 600)
        runtime.set_mode("enforce", "test")
        tctx.configure(addon, proxylog_config=str(second))
        for _ in range(200):  # the reload runs as a task on this loop
            if runtime.config.record.headers == ("accept",):
                break
            await asyncio.sleep(0.01)
        assert addon.runtime is runtime
        assert runtime.config.record.headers == ("accept",) and runtime.config.source == str(second)
        assert [ban.key for ban in runtime.engine.bans()] == ["192.0.2.9"]
        assert runtime.mode == "enforce"
        await addon.done()
