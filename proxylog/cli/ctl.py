"""`proxylog ctl`: talk to a running proxylog's control socket (or its loopback TCP port)."""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import sys
import time
from typing import Any

import orjson
import yaml

from proxylog.config import Config, ConfigError, parse_host_port
from proxylog.config.secrets import read_secret

EXIT_OK = 0
EXIT_COMMAND_FAILED = 1
EXIT_UNREACHABLE = 3

EPILOG = """\
commands:
  status                       mode, uptime, sinks, bans at a glance
  mode [monitor|enforce]       show or switch the rule mode (takes effect on the next request)
  bans                         active bans
  ban IP|CIDR [--ttl 1h]       ban now (an operator ban; audited)
  unban IP|CIDR                lift a ban
  allow [list|add|remove] [CIDR]  the runtime allowlist
  reload                       re-read the config file (a bad file keeps the old one running)
  reopen                       reopen sink files (after an external logrotate)
  stats                        counters: requests, rules, sinks, reloads, alerts

Every change is written to the access stream as an audit record. Exit codes: 0 done,
1 the command was refused (the message says why), 2 usage error, 3 proxylog unreachable.
"""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class ControlClient:
    """One JSON request per call to the control API; raises OSError when unreachable."""

    def __init__(
        self,
        socket_path: str | None = None,
        tcp: tuple[str, int] | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.socket_path = socket_path
        self.tcp = tcp
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, args: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        conn: http.client.HTTPConnection
        if self.tcp is not None:
            conn = http.client.HTTPConnection(self.tcp[0], self.tcp[1], timeout=self.timeout)
        else:
            conn = _UnixHTTPConnection(self.socket_path or "", self.timeout)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, path, orjson.dumps(args) if args is not None else None, headers)
            response = conn.getresponse()
            payload = orjson.loads(response.read() or b"{}")
        finally:
            conn.close()
        return response.status, payload


def register(commands: Any) -> None:
    ctl = commands.add_parser(
        "ctl",
        help="control a running proxylog (mode, bans, reload, ...)",
        description="Control a running proxylog through its control socket.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ctl.add_argument(
        "--socket", metavar="PATH", help="control socket (default: from --config, else the default)"
    )
    ctl.add_argument("--config", "-c", metavar="FILE", help="find the socket from this config file")
    ctl.add_argument("--tcp", metavar="HOST:PORT", help="use the loopback TCP control port instead")
    ctl.add_argument(
        "--token-file", metavar="FILE", help="bearer token for --tcp (or $PROXYLOG_CONTROL_TOKEN)"
    )
    ctl.add_argument("--json", action="store_true", help="print the raw JSON answer")
    ctl.add_argument(
        "command",
        choices=("status", "mode", "bans", "ban", "unban", "allow", "reload", "reopen", "stats"),
        metavar="COMMAND",
    )
    ctl.add_argument("args", nargs="*", metavar="ARG")
    ctl.add_argument("--ttl", default="1h", help="ban duration for `ban` (default 1h)")
    ctl.add_argument("--reason", help="note stored with a `ban`")
    ctl.set_defaults(func=cmd_ctl)


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    rest = args.args
    match args.command, rest:
        case "status" | "bans" | "stats", []:
            return "GET", f"/{args.command}", None
        case "mode", []:
            return "GET", "/mode", None
        case "mode", [mode]:
            return "POST", "/mode", {"mode": mode}
        case "ban", [key]:
            return "POST", "/ban", {"key": key, "ttl": args.ttl, "reason": args.reason}
        case "unban", [key]:
            return "POST", "/unban", {"key": key}
        case "allow", [] | ["list"]:
            return "GET", "/allow", None
        case "allow", ["add", cidr]:
            return "POST", "/allow", {"cidr": cidr}
        case "allow", ["remove", cidr]:
            return "POST", "/disallow", {"cidr": cidr}
        case "reload" | "reopen", []:
            return "POST", f"/{args.command}", None
    raise argparse.ArgumentTypeError(f"`{args.command} {' '.join(rest)}`: wrong arguments (see --help)")


def socket_from_config(path: str) -> str:
    """The control socket a config file points at. Only `control.socket` and `state_dir` are
    read, so `ctl --config FILE reload` still works after the rest of the file was broken."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f.read()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError("", f"cannot read {path} to find the control socket ({e}); pass --socket") from e
    control = data.get("control") if isinstance(data, dict) else None
    if isinstance(control, dict) and isinstance(socket_path := control.get("socket"), str):
        return os.path.expanduser(socket_path)
    state_dir = data.get("state_dir") if isinstance(data, dict) else None
    if isinstance(state_dir, str):
        return os.path.join(os.path.expanduser(state_dir), "control.sock")
    return Config().control_socket


def _client(args: argparse.Namespace) -> ControlClient:
    if args.tcp:
        env = "PROXYLOG_CONTROL_TOKEN"
        token = read_secret(args.token_file, env, "", file_key="--token-file", env_key=env)
        return ControlClient(tcp=parse_host_port(args.tcp), token=token)
    path = args.socket or (socket_from_config(args.config) if args.config else Config().control_socket)
    return ControlClient(socket_path=path)


def cmd_ctl(args: argparse.Namespace) -> int:
    try:
        method, path, body = _request(args)
    except argparse.ArgumentTypeError as e:
        print(f"proxylog ctl: {e}", file=sys.stderr)
        return 2
    try:
        client = _client(args)
    except (ConfigError, ValueError) as e:
        print(f"proxylog ctl: {e}", file=sys.stderr)
        return 2
    try:
        status, payload = client.call(method, path, body)
    except (OSError, http.client.HTTPException, orjson.JSONDecodeError) as e:
        where = f"{client.tcp[0]}:{client.tcp[1]}" if client.tcp else client.socket_path
        print(f"proxylog ctl: cannot reach proxylog at {where}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
    elif payload.get("ok"):
        print(_human(args.command, payload))
        if "warning" in payload:
            print(f"proxylog ctl: warning: {payload['warning']}", file=sys.stderr)
    if not payload.get("ok"):
        if not args.json:
            print(f"proxylog ctl: {payload.get('error', f'HTTP {status}')}", file=sys.stderr)
        return EXIT_COMMAND_FAILED
    return EXIT_OK


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _human(command: str, p: dict[str, Any]) -> str:
    if command == "status":
        sinks = "\n".join(
            f"  {s['name']}: {'ok' if s['healthy'] else 'FAILING'}, "
            f"{s['queued']} queued, {s.get('spooled', 0)} spooled, {s['dropped']} dropped"
            + (f" ({s['last_error']})" if s.get("last_error") and not s["healthy"] else "")
            for s in p["sinks"]
        )
        lines = [
            f"proxylog {p['version']}, engine {p.get('engine', '?')}, mode {p['mode']}, "
            f"up {p['uptime_s']:.0f}s",
            f"config: {p['config'] or '(built-in defaults)'}",
            f"in flight: {p.get('inflight', '?')}, active bans: {p['bans']}",
            "sinks:",
            sinks,
        ]
        return "\n".join(lines)
    if command == "mode":
        return f"mode {p['mode']}" + (f" (was {p['previous']})" if "previous" in p else "")
    if command == "bans":
        if not p["bans"]:
            return "no active bans"
        return "\n".join(
            f"{b['key']}  until {_when(b['until'])}  rule {b['rule']}  x{b['count']}"
            + (f"  {b['reason']}" if b.get("reason") else "")
            for b in p["bans"]
        )
    if command == "ban":
        b = p["ban"]
        return f"banned {b['key']} until {_when(b['until'])}"
    if command == "unban":
        return f"unbanned {p['key']}" if p["lifted"] else f"{p['key']} was not banned"
    if command == "allow":
        return "\n".join(p["allow"]) if p["allow"] else "allowlist is empty"
    if command == "reload":
        return "\n".join([f"reloaded {p['config']}", *(f"warning: {w}" for w in p["warnings"])])
    if command == "reopen":
        return f"reopened: {', '.join(p['reopened'])}"
    return orjson.dumps({k: v for k, v in p.items() if k != "ok"}, option=orjson.OPT_INDENT_2).decode()
