"""proxylog as a mitmproxy script: one redacted ECS JSON access record per request.

Usage, in front of Puma on :3000 (records go to the config's sinks, stdout by default):

    mitmdump -q -s addons/proxylog_addon.py \\
        --mode reverse:http://127.0.0.1:3000@8080 \\
        --set proxylog_config=configs/proxylog.yaml

`-q` keeps mitmdump's own flow lines off stdout, which the stdout sink uses. Under mitmdump,
options a front proxy needs (connection_strategy=lazy, keep_host_header, block_global=false)
are switched on when left at mitmproxy's defaults. The control socket (`proxylog ctl`), the
metrics endpoint, the saved mode and bans, and SIGHUP (reload and reopen) work as under
`proxylog serve`; proxylog's own notices go to stderr. `proxylog serve` runs the same addon in
a leaner master (about 1.5x the throughput) with graceful draining on SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from mitmproxy import ctx

from proxylog.mitm.addon import ProxyLog
from proxylog.ops.control import ControlServer, MetricsServer
from proxylog.state.file import StateFile

logger = logging.getLogger("proxylog")


def _notices_to_stderr() -> None:
    """proxylog's log lines on stderr, never mixed into mitmdump's stdout (the stdout sink)."""
    if not any(getattr(h, "proxylog_stderr", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("proxylog: %(levelname)s: %(message)s"))
        handler.proxylog_stderr = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class Operations:
    """What `proxylog serve` adds around the addon, for stock mitmdump: the saved mode and bans,
    the control socket, the metrics endpoint and SIGHUP. Started once the addon's runtime
    runs, stopped when mitmdump shuts down."""

    def __init__(self, proxylog: ProxyLog) -> None:
        self.proxylog = proxylog
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None

    async def running(self) -> None:
        runtime = self.proxylog.runtime
        if runtime is None or self.control is not None:
            return
        if runtime.state is None:
            runtime.state = StateFile(runtime.config.state_dir)
            runtime.restore()
        extra = {"engine": "mitmdump"}
        control = ControlServer(runtime, extra_status=lambda: {"inflight": self.proxylog.inflight, **extra})
        metrics = MetricsServer(runtime, inflight=lambda: self.proxylog.inflight)
        try:
            await control.start()
            await metrics.start()
        except OSError as e:
            await control.stop()
            logger.error("control socket or metrics endpoint not started: %s", e)
            return
        self.control, self.metrics = control, metrics
        if list(ctx.options.mode) == ["regular"]:
            config = runtime.config
            logger.warning(
                "mitmdump serves its own --mode (a regular proxy), not the config's listen/upstream: "
                "pass --mode reverse:%s@%s:%d to front Puma",
                config.upstream,
                *config.listen,
            )
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, runtime.sighup)
        served = f", metrics on :{metrics.port}" if metrics.port else ""
        logger.info("control socket %s%s", control.path, served)

    async def done(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
        if self.control is not None:
            await self.control.stop()
        self.control = self.metrics = None


_notices_to_stderr()
_proxylog = ProxyLog()
addons = [_proxylog, Operations(_proxylog)]
