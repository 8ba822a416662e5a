"""The admin API: mode, bans, allowlist, reload, reopen, status and stats, over a 0600 Unix
socket (peer must be our own user or root) and optionally TCP on loopback with a bearer token.

Every command is a handler in one dict. A handler never raises to the socket: it answers
``{"ok": false, "error": ...}``. Every change is audited into the access stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from typing import Any

import orjson

from proxylog import __version__
from proxylog.config import parse_duration
from proxylog.config.ops import ControlSpec
from proxylog.config.secrets import read_secret
from proxylog.ops.client import ON_BEHALF_OF
from proxylog.ops.httpserver import Request, Response, connection_handler
from proxylog.ops.prometheus import MetricsServer
from proxylog.runtime import Runtime

__all__ = ["COMMANDS", "CommandError", "ControlEndpoint", "ControlServer", "MetricsServer"]

logger = logging.getLogger("proxylog.ops.control")

# A command's first argument is the endpoint serving it (a ControlServer for COMMANDS).
Command = Callable[[Any, Request, dict[str, Any]], Awaitable[dict[str, Any]]]


class CommandError(Exception):
    """A command refused its input; the message goes back to the caller."""


def who_sent(request: Request) -> str:
    """Who sent a command, for its audit record: the peer, or the operator a worker's own
    supervisor forwarded it for."""
    forwarded = request.headers.get(ON_BEHALF_OF.lower())
    if forwarded and request.peer_pid is not None and request.peer_pid == os.getppid():
        return f"{forwarded[:200]} via the supervisor"
    if request.peer_uid is not None:
        return f"uid {request.peer_uid} pid {request.peer_pid} (unix socket)"
    return f"{request.peer} (tcp, token)"


def _text(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value.strip():
        raise CommandError(f"`{name}` is required")
    return value.strip()


async def _status(server: ControlServer, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    runtime = server.runtime
    return {
        "version": __version__,
        "mode": runtime.mode,
        "uptime_s": round(runtime.clock() - runtime.started, 1),
        "config": runtime.config.source,
        # absolute, so `proxylog ctl --config` can tell whether this is the instance it means
        "config_path": os.path.realpath(runtime.config.source) if runtime.config.source else None,
        "bans": len(runtime.engine.bans()),
        "state": runtime.store.stats(),
        "sinks": [
            {
                "name": w.name,
                "healthy": w.stats.healthy,
                "queued": w.depth,
                "spooled": w.stats.spool_depth,
                "dropped": w.stats.dropped,
                "last_error": w.stats.last_error,
            }
            for w in runtime.workers
        ],
        **server.extra_status(),
    }


async def _persisted(server: ControlServer, result: dict[str, Any]) -> dict[str, Any]:
    """`result` once the state file has the change; with a `warning` if it could not be
    written (the change is live, but a restart would lose it)."""
    error = await server.runtime.saved()
    return result if error is None else {**result, "warning": f"{error}: the change is live, not persisted"}


async def _mode(server: ControlServer, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    mode = args.get("mode")
    if mode is None:
        return {"mode": server.runtime.mode}
    try:
        old = server.runtime.set_mode(str(mode), who_sent(request))
    except ValueError as e:
        raise CommandError(str(e)) from e
    return await _persisted(server, {"mode": server.runtime.mode, "previous": old})


async def _bans(server: ControlServer, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    return {"bans": [asdict(ban) for ban in server.runtime.engine.bans()]}


async def _ban(server: ControlServer, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    key = _text(args, "key")
    try:
        ttl = parse_duration(args.get("ttl", "1h"))
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        ban = server.runtime.engine.ban(key, ttl, "manual", args.get("reason"))
    except ValueError as e:
        raise CommandError(f"cannot ban {key!r}: {e}") from e
    server.runtime.audit("ban", who_sent(request), None, asdict(ban))
    server.runtime.persist()
    return await _persisted(server, {"ban": asdict(ban)})


async def _unban(server: ControlServer, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    key = _text(args, "key")
    lifted = server.runtime.engine.unban(key)
    if lifted:
        server.runtime.audit("unban", who_sent(request), key, None)
        server.runtime.persist()
    return await _persisted(server, {"key": key, "lifted": lifted})


async def _allowlist(server: ControlServer, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    return {"allow": server.runtime.engine.allowlist()}


async def _allow(server: ControlServer, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    cidr = _text(args, "cidr")
    try:
        server.runtime.engine.allow(cidr)
    except ValueError as e:
        raise CommandError(f"cannot allowlist {cidr!r}: {e}") from e
    server.runtime.audit("allow", who_sent(request), None, cidr)
    server.runtime.persist()
    return await _persisted(server, {"allow": server.runtime.engine.allowlist()})


async def _disallow(server: ControlServer, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    cidr = _text(args, "cidr")
    removed = server.runtime.engine.disallow(cidr)
    if removed:
        server.runtime.audit("disallow", who_sent(request), cidr, None)
        server.runtime.persist()
    allow = server.runtime.engine.allowlist()
    return await _persisted(server, {"cidr": cidr, "removed": removed, "allow": allow})


async def _reload(server: ControlServer, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    result = await server.runtime.reload(who_sent(request))
    if not result.ok:
        raise CommandError(f"reload failed, the running config is unchanged: {result.error}")
    return {"config": result.source, "warnings": list(result.warnings)}


async def _reopen(server: ControlServer, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    server.runtime.reopen()
    server.runtime.audit("reopen", who_sent(request))
    return {"reopened": [w.name for w in server.runtime.workers]}


async def _stats(server: ControlServer, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    runtime = server.runtime
    metrics = runtime.metrics
    return {
        "requests": {f"{klass}/{action}": n for (klass, action), n in sorted(metrics.requests.items())},
        "upstream": {"count": metrics.upstream_count, "sum_s": round(metrics.upstream_sum, 3)},
        "rules": runtime.engine.stats().as_dict(),
        "sinks": {w.name: w.snapshot() for w in runtime.workers},
        "reloads": dict(metrics.reloads),
        "alerts": None if runtime.alerts is None else runtime.alerts.snapshot(),
        "internal_errors": runtime.internal_errors,
    }


async def _metrics(server: ControlServer, request: Request, args: dict[str, Any]) -> dict[str, Any]:
    if server.exposition is None:
        raise CommandError("this process has no metrics registry")
    return {"exposition": server.exposition().decode()}


COMMANDS: dict[tuple[str, str], Command] = {
    ("GET", "/status"): _status,
    ("GET", "/mode"): _mode,
    ("POST", "/mode"): _mode,
    ("GET", "/bans"): _bans,
    ("POST", "/ban"): _ban,
    ("POST", "/unban"): _unban,
    ("GET", "/allow"): _allowlist,
    ("POST", "/allow"): _allow,
    ("POST", "/disallow"): _disallow,
    ("POST", "/reload"): _reload,
    ("POST", "/reopen"): _reopen,
    ("GET", "/stats"): _stats,
    ("GET", "/metrics"): _metrics,
}


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(status, orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS))


def _peer_credentials(writer: asyncio.StreamWriter) -> tuple[str, int | None, int | None]:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return "unix", uid, pid
    peer = writer.get_extra_info("peername")
    return (f"{peer[0]}:{peer[1]}" if peer else "unknown"), None, None


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ControlEndpoint:
    """The admin API's listeners: the Unix socket at `path` (and TCP when `spec.tcp` is set),
    serving a table of commands. Each command gets this endpoint, the request and its JSON
    arguments."""

    def __init__(self, spec: ControlSpec, path: str, commands: Mapping[tuple[str, str], Command]) -> None:
        self.spec = spec
        self.commands = commands
        self.token = read_secret(spec.token_file, spec.token_env, "control") if spec.tcp else None
        self.path = path
        self._servers: list[asyncio.Server] = []
        self._bound: tuple[int, int] | None = None  # (device, inode) of the socket we bound

    async def start(self) -> None:
        """Bind the socket 0600 (the directory is created 0700 if missing); raises OSError."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise OSError(f"{self.path} exists and is not a socket: remove it or set control.socket")
            if _socket_alive(self.path):
                raise OSError(f"another proxylog already serves {self.path}")
            os.unlink(self.path)  # a stale socket left by a process that died
        serve = connection_handler(self.handle, _peer_credentials)
        old_umask = os.umask(0o177)  # the socket is created 0600, with no window where it is wider
        try:
            self._servers.append(await asyncio.start_unix_server(serve, self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._bound = _identity(self.path)
        if (tcp := self.spec.tcp) is not None:
            self._servers.append(await asyncio.start_server(serve, tcp[0], tcp[1]))

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []
        # Only the socket this server bound: never one a newer instance put at the same path.
        if self._bound is not None and _identity(self.path) == self._bound:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._bound = None

    async def handle(self, request: Request) -> Response:
        if request.peer_uid is not None:
            if request.peer_uid not in (os.getuid(), 0):
                return _json(
                    403, {"ok": False, "error": "only the owner of the proxylog process may connect"}
                )
        elif not self._token_ok(request.headers.get("authorization", "")):
            return _json(401, {"ok": False, "error": "missing or wrong bearer token"})
        command = self.commands.get((request.method, request.path))
        if command is None:
            known = sorted({path for _, path in self.commands})
            return _json(
                404,
                {"ok": False, "error": f"unknown command {request.method} {request.path}", "commands": known},
            )
        try:
            args = orjson.loads(request.body) if request.body else {}
            if not isinstance(args, dict):
                raise CommandError("the body must be a JSON object")
            return _json(200, {"ok": True, **await command(self, request, args)})
        except orjson.JSONDecodeError as e:
            return _json(400, {"ok": False, "error": f"invalid JSON body: {e}"})
        except CommandError as e:
            return _json(400, {"ok": False, "error": str(e)})

    def _token_ok(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return (
            self.token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(token.strip().encode(), self.token.encode())
        )


class ControlServer(ControlEndpoint):
    """One proxylog process's admin API: COMMANDS on its runtime. `extra_status` adds the
    data plane's view to `status`; `exposition` is what `GET /metrics` returns (the
    supervisor of several workers sums theirs)."""

    def __init__(
        self,
        runtime: Runtime,
        extra_status: Callable[[], dict[str, Any]] = dict,
        exposition: Callable[[], bytes] | None = None,
    ) -> None:
        super().__init__(runtime.config.control, runtime.config.control_socket, COMMANDS)
        self.runtime = runtime
        self.extra_status = extra_status
        self.exposition = exposition


def _socket_alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True
