"""`proxylog ctl`: talk to a running proxylog's control socket (or its loopback TCP port)."""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import os
import sys
import time
from typing import Any

import orjson
import yaml

from proxylog.config import ConfigError, default_state_dir, parse_duration, parse_host_port, runtime_directory
from proxylog.config.secrets import read_secret
from proxylog.ops.client import ControlClient
from proxylog.record import MODES

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


def register(commands: Any) -> None:
    ctl = commands.add_parser(
        "ctl",
        help="control a running proxylog (mode, bans, reload, ...)",
        description="Control a running proxylog through its control socket.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ctl.add_argument(
        "--socket",
        metavar="PATH",
        help="control socket (default: where `serve` would put it, then /run/proxylog and "
        "/var/lib/proxylog)",
    )
    ctl.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="talk to the proxylog serving this config file (refused if the socket found serves another)",
    )
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


def _check_key(key: str, what: str) -> str:
    """`key` if it is an IP address or network; else a usage error (exit 2) before any call."""
    try:
        ipaddress.ip_network(key, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {key!r}: expected an IP address or CIDR") from None
    return key


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    rest = args.args
    if args.command == "mode" and rest and rest[0] not in MODES:
        raise argparse.ArgumentTypeError(f"mode {rest[0]!r}: expected one of {', '.join(MODES)}")
    if args.command in ("ban", "unban") and len(rest) == 1:
        _check_key(rest[0], args.command)
    if args.command == "allow" and len(rest) == 2:
        _check_key(rest[1], f"allow {rest[0]}")
    if args.command == "ban":
        try:
            parse_duration(args.ttl)
        except ValueError:
            message = f"--ttl {args.ttl!r}: expected a duration like 1h or 1h30m"
            raise argparse.ArgumentTypeError(message) from None
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


# Where a systemd unit with RuntimeDirectory=/StateDirectory=proxylog puts the socket, for a
# `proxylog ctl` run from a shell, which has neither variable.
SYSTEMD_SOCKETS = ("/run/proxylog/control.sock", "/var/lib/proxylog/control.sock")


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f.read()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError("", f"cannot read {path} to find the control socket ({e}); pass --socket") from e
    return data if isinstance(data, dict) else {}


def socket_from_config(path: str) -> str:
    """The control socket a config file names (`control.socket`, or `state_dir`), else the
    default. Only those keys are read, so `ctl --config FILE reload` still works after the
    rest of the file was broken."""
    return sockets_for(path)[0]


def sockets_for(config_path: str | None) -> list[str]:
    """Where the instance serving `config_path` (None: any) may listen, most likely first:
    what the file names; else what `serve` would choose here (``$RUNTIME_DIRECTORY``,
    ``$STATE_DIRECTORY``, the default state directory), then the systemd unit's directories."""
    data = _read_yaml(config_path) if config_path else {}
    control = data.get("control")
    if isinstance(control, dict) and isinstance(socket_path := control.get("socket"), str):
        return [os.path.expanduser(socket_path)]
    found = []
    if runtime := runtime_directory():
        found.append(os.path.join(runtime, "control.sock"))
    state_dir = data.get("state_dir")
    if isinstance(state_dir, str):
        found.append(os.path.join(os.path.expanduser(state_dir), "control.sock"))
    else:
        found.append(os.path.join(default_state_dir(), "control.sock"))
    found += SYSTEMD_SOCKETS
    return list(dict.fromkeys(found))


class WrongInstance(Exception):
    """Every proxylog reachable runs another config than the one `--config` names."""


def find_instance(config_path: str | None, candidates: list[str]) -> ControlClient:
    """A client for the first candidate socket whose proxylog answers and (with
    `config_path`) runs that config. Raises WrongInstance when only other configs' instances
    answer, OSError when none does."""
    wanted = os.path.realpath(config_path) if config_path else None
    others = []
    for path in candidates:
        if not os.path.exists(path):
            continue
        client = ControlClient(socket_path=path, timeout=5.0)
        try:
            _, status = client.call("GET", "/status")
        except (OSError, http.client.HTTPException, orjson.JSONDecodeError):
            continue
        running = status.get("config_path") or status.get("config")
        if wanted is None or running == wanted:
            return ControlClient(socket_path=path)
        others.append(f"{path} serves {running or '(no config file)'}")
    if others:
        raise WrongInstance(
            f"no proxylog serving {wanted} answers; " + "; ".join(others) + " (pass --socket to pick one)"
        )
    raise OSError(f"no proxylog answers at {', '.join(candidates)}")


def _client(args: argparse.Namespace) -> ControlClient:
    if args.tcp:
        env = "PROXYLOG_CONTROL_TOKEN"
        token = read_secret(args.token_file, env, "", file_key="--token-file", env_key=env)
        return ControlClient(tcp=parse_host_port(args.tcp), token=token)
    if args.socket and not args.config:
        return ControlClient(socket_path=args.socket)
    candidates = [args.socket] if args.socket else sockets_for(args.config)
    return find_instance(args.config, candidates)


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
    except (WrongInstance, OSError) as e:
        print(f"proxylog ctl: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
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
            f"  {s['name']}{'' if s.get('worker') is None else f' (worker {s['worker']})'}: "
            f"{'ok' if s['healthy'] else 'FAILING'}, "
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
        if workers := p.get("workers"):
            lines.append("workers:")
            lines += [
                f"  {w['index']}: pid {w['pid']}, {'ready' if w['ready'] else 'NOT READY'}, "
                f"{w['restarts']} restarts" + (f" (last: {w['last_exit']})" if w.get("last_exit") else "")
                for w in workers
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
    if command == "stats":
        return _human_stats(p)
    return orjson.dumps({k: v for k, v in p.items() if k != "ok"}, option=orjson.OPT_INDENT_2).decode()


def _human_stats(p: dict[str, Any]) -> str:
    """`ctl stats` for a terminal: requests, rules, sinks, reloads, alerts (--json: all of it)."""
    requests = p.get("requests", {})
    lines = [f"requests: {sum(requests.values())}"]
    lines += [f"  {key}: {count}" for key, count in requests.items()]
    upstream = p.get("upstream", {})
    if upstream.get("count"):
        mean = upstream["sum_s"] / upstream["count"]
        lines.append(f"upstream: {upstream['count']} answered, mean {mean:.3f}s")
    rules = p.get("rules", {})
    active = rules.get("bans", {}).get("active", 0)
    lines.append(f"rules: {rules.get('checks', 0)} checks, {active} active bans")
    lines += [
        f"  {rule}: matched {r['matched']}, fired {r['fired']}, bans {r['bans']}, keys {r['keys']}"
        for rule, r in rules.get("rules", {}).items()
    ]
    lines.append("sinks:")
    lines += [
        f"  {name}: written {s['written']}, dropped {s['dropped']}, queued {s['queue_depth']}, "
        f"spooled {s['spool_depth']}, retries {s['retries']}{'' if s['healthy'] else ', FAILING'}"
        for name, s in p.get("sinks", {}).items()
    ]
    reloads = p.get("reloads", {})
    lines.append(f"reloads: {reloads.get('ok', 0)} ok, {reloads.get('failed', 0)} failed")
    if alerts := p.get("alerts"):
        sent, failed, suppressed = alerts["sent"], alerts["failed"], alerts["suppressed"]
        lines.append(f"alerts: {sent} sent, {failed} failed, {suppressed} suppressed")
    lines.append(f"internal errors: {p.get('internal_errors', 0)}")
    return "\n".join(lines)
