"""The fast plane as `proxylog serve` runs it: FastServer over the pipeline, driven by the
runtime's config, with the same start, drain and stop as the mitmproxy plane."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from proxylog.config import Config
from proxylog.diagnostics import announce_listening
from proxylog.fast.bridge import PipelineHandler
from proxylog.fast.options import FastOptions
from proxylog.fast.server import FastServer
from proxylog.pipeline import Pipeline
from proxylog.runtime import Runtime

logger = logging.getLogger("proxylog")


def fast_options(config: Config, *, reuse_port: bool = False) -> FastOptions:
    """The fast plane's settings from a config whose engine is `fast` (an http:// upstream)."""
    assert config.upstream is not None
    upstream = urlsplit(config.upstream)
    host, port = config.listen
    return FastOptions(
        upstream_host=upstream.hostname or "127.0.0.1",
        upstream_port=upstream.port or 80,
        listen_host=host,
        listen_port=port,
        reuse_port=reuse_port,
        header_timeout=config.timeouts.header,
        idle_timeout=config.timeouts.idle,
        upstream_timeout=config.timeouts.upstream,
        drain_timeout=config.timeouts.drain,
        body_rate=config.timeouts.body_rate,
        body_window=config.timeouts.body_window,
        write_timeout=config.timeouts.write,
        connections_per_client=config.limits.connections_per_client,
        header_bytes=config.limits.header_bytes,
        body_size=config.limits.body_size,
        stream_threshold=config.limits.stream_threshold,
    )


class FastPlane:
    """`proxylog serve` on the fast plane: `run` serves until `request_stop`."""

    name = "fast"

    def __init__(self, runtime: Runtime, *, reuse_port: bool = False, worker: int | None = None) -> None:
        self.runtime = runtime
        self.worker = worker
        self.server = FastServer(
            fast_options(runtime.config, reuse_port=reuse_port), PipelineHandler(Pipeline(runtime))
        )
        self._reuse_port = reuse_port
        self._stopping = False
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        runtime.hooks.apply.append(self.apply_options)
        runtime.hooks.banned.append(self.server.banned)

    @property
    def inflight(self) -> int:
        return self.server.inflight

    def listen_addrs(self) -> list[tuple[str, int]]:
        return self.server.listen_addrs()

    def apply_options(self, config: Config) -> None:
        """A reloaded config's limits and timeouts, for what starts from now on."""
        self.server.reconfigure(fast_options(config, reuse_port=self._reuse_port))

    async def run(self) -> None:
        """Listen (OSError when the address cannot be bound), serve until stopped, then close
        the server and the runtime (flushing every sink)."""
        self.runtime.start()
        try:
            await self.server.start()
            announce_listening(self.listen_addrs(), self.runtime.config, self.name, worker=self.worker)
            await self._stopped.wait()
        finally:
            await self.server.close()
            await self.runtime.close(self.runtime.config.timeouts.drain)

    def request_stop(self, reason: str = "stop") -> None:
        """First call: stop accepting and drain in-flight requests; second call: stop now."""
        if self._stopping:
            logger.warning("%s again, exiting without waiting", reason)
            self._stopped.set()
            return
        self._stopping = True
        logger.warning("%s received, draining in-flight requests", reason)
        task = asyncio.get_running_loop().create_task(self._graceful_stop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _graceful_stop(self) -> None:
        try:
            timeout = self.runtime.config.timeouts.drain
            if not await self.server.drain(timeout):
                logger.error("%d requests still in flight after %.0fs drain timeout", self.inflight, timeout)
        except Exception:
            self.runtime.internal_errors += 1
            logger.exception("internal error while draining; stopping anyway")
        finally:  # never left waiting for a second signal; close() abandons what is left
            self._stopped.set()
