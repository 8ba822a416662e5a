"""The `proxylog` command: serve, check (more subcommands join as they are built)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from proxylog import __version__
from proxylog.errors import ConfigError

if TYPE_CHECKING:
    import asyncio

    from proxylog.config import Config

# Heavier modules (proxylog.config, asyncio, the subcommands) are imported where they are
# used, so `serve` holds its signals (main) within milliseconds of starting.

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2

DESCRIPTION = """\
proxylog sits in front of Puma as a reverse proxy (built on mitmproxy) and writes one
redacted, ECS-shaped JSON access record per request to stdout, files and collectors.
"""

SERVE_EPILOG = """\
examples:
  proxylog serve --upstream http://127.0.0.1:3000 --listen 127.0.0.1:8080
  proxylog serve --config /etc/proxylog/proxylog.yaml
  proxylog serve --config proxylog.yaml --mode transparent@8080

Flags override the config file. Records go to the sinks in the config (stdout by
default); proxylog's own diagnostics go to stderr. SIGTERM or SIGINT stops accepting,
lets in-flight requests finish (timeouts.drain), flushes the sinks and exits 0; a second
signal skips the rest of the drain. SIGHUP reloads the config and reopens files; before
proxylog listens, SIGHUP is ignored and SIGTERM or SIGINT exit 0 at once.
"""


def build_parser() -> argparse.ArgumentParser:
    from proxylog.config import ENGINES, LOG_LEVELS

    parser = argparse.ArgumentParser(
        prog="proxylog",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"proxylog {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the proxy in front of Puma",
        description="Run proxylog as a reverse proxy in front of Puma.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: built-in defaults)")
    serve.add_argument("--upstream", metavar="URL", help="where Puma listens, e.g. http://127.0.0.1:3000")
    serve.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to accept clients on (default 127.0.0.1:8080)",
    )
    serve.add_argument(
        "--mode",
        metavar="SPEC",
        action="append",
        dest="modes",
        help="a mitmproxy mode spec (e.g. transparent@8080) served instead of reverse; repeatable",
    )
    serve.add_argument(
        "--enforce",
        action="store_true",
        help="start in enforce mode, and keep it as the operator's choice (default: a mode set "
        "earlier with `proxylog ctl mode`, else the config's mode:)",
    )
    serve.add_argument(
        "--engine",
        choices=ENGINES,
        help="the data plane: fast (HTTP/1.1 reverse proxy to an http:// upstream), mitmproxy "
        "(modes:, TLS, HTTP/2), or auto, the default: fast where it can serve, else mitmproxy",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N worker processes on the listen port (fast engine; default: the config's "
        "workers:, else 1), under a supervisor that restarts them and owns the control socket",
    )
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    serve.add_argument("--log-level", choices=LOG_LEVELS, help="stderr diagnostics level")
    serve.set_defaults(func=cmd_serve)

    check = commands.add_parser(
        "check",
        help="validate a config file without starting",
        description="Validate a config file. Exit 0 if valid, 2 if not; every error found is "
        "reported (up to 20), each naming its key path.",
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument("--json", action="store_true", help="print the verdict and every error as JSON")
    check.set_defaults(func=cmd_check)

    # Each further subcommand lives in its own module and takes the subparsers object.
    from proxylog.cli import ctl, redact_test, replay, verify

    for register in (ctl.register, redact_test.register, replay.register, verify.register):
        register(commands)
    return parser


def _load(path: str | None) -> Config:
    from proxylog.config import Config, load_config

    return load_config(path) if path else Config()


def _check_creatable_dir(directory: str, key: str) -> None:
    """Raise ConfigError(`key`) unless `directory` is, or could be made, a writable directory.
    Probes by creating and removing a temporary directory in it or, if it is missing, in its
    nearest existing ancestor: nothing is left behind (`serve` creates what is missing)."""
    import tempfile

    target = os.path.abspath(os.path.expanduser(directory))
    probe = target
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(key, f"cannot create {directory!r}: {probe!r} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".proxylog-check-", dir=probe))
    except OSError as e:
        verb = "write to" if probe == target else f"create {directory!r} in"
        raise ConfigError(key, f"cannot {verb} {probe!r}: {e.strerror or e}") from e


def _check_paths(config: Config) -> None:
    """The state directory and each sink's own file, spool and quarantine directories."""
    from proxylog.config import FileSpec

    _check_creatable_dir(config.state_dir, "state_dir")
    for index, spec in enumerate(config.sinks):
        if isinstance(spec, FileSpec):
            _check_creatable_dir(os.path.dirname(os.path.abspath(spec.path)), f"sinks[{index}].path")
        if spec.spool is not None:
            _check_creatable_dir(spec.spool, f"sinks[{index}].spool")
        if spec.quarantine is not None:
            _check_creatable_dir(
                os.path.dirname(os.path.abspath(spec.quarantine)), f"sinks[{index}].quarantine"
            )


MAX_CHECK_ERRORS = 20
_RULE_KEYS = ("rules", "intel", "allow")  # parsed together: one section


def config_errors(path: str, limit: int = MAX_CHECK_ERRORS) -> tuple[Config | None, list[ConfigError]]:
    """The config in `path`, or every error found in it (up to `limit`): past the first, each
    top-level section is parsed on its own, so one bad section does not hide another."""
    from proxylog.config import load_config, parse_config
    from proxylog.config.reader import load_yaml

    try:
        return load_config(path), []
    except ConfigError as first:
        errors = [first]
    try:
        with open(path, encoding="utf-8") as f:
            data = load_yaml(f.read(), name=path)
    except Exception:  # unreadable or not YAML: the first error says so
        return None, errors
    if not isinstance(data, dict):
        return None, errors
    sections = [{key: value} for key, value in data.items() if key not in _RULE_KEYS]
    sections.append({key: data[key] for key in _RULE_KEYS if key in data})
    seen = {str(errors[0])}
    for section in sections:
        try:
            parse_config(section, source=path)
        except ConfigError as e:
            if str(e) not in seen:
                seen.add(str(e))
                errors.append(e)
        if len(errors) >= limit:
            break
    return None, errors[:limit]


def _report(path: str, errors: list[ConfigError], as_json: bool) -> None:
    if as_json:
        import orjson

        found = [{"path": e.path, "message": e.message} for e in errors]
        print(orjson.dumps({"ok": not errors, "file": path, "errors": found}).decode())
        return
    for error in errors:
        print(f"proxylog: invalid configuration: {error}", file=sys.stderr)
    if len(errors) >= MAX_CHECK_ERRORS:
        print(f"proxylog: (stopped after {MAX_CHECK_ERRORS} errors)", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    """Validate everything `serve` would, short of binding sockets: the file (every section,
    reporting each error found), the engine and (for mitmproxy) its modes, then the same
    compile step `serve` runs (rule engine and redactor, intel files read, patterns compiled
    together), every sink built, the secrets read, and that the state directory and file
    sinks' directories can be created."""
    config, errors = config_errors(args.file)
    if config is None:
        _report(args.file, errors, args.json)
        return EXIT_INVALID
    engine = "?"
    for check in _checks(config):
        try:
            engine = check() or engine
        except ConfigError as e:
            errors.append(e)
    if errors:
        _report(args.file, errors, args.json)
        return EXIT_INVALID
    if args.json:
        import orjson

        summary = {"ok": True, "file": args.file, "sinks": len(config.sinks), "engine": engine, "errors": []}
        print(orjson.dumps(summary).decode())
    else:
        print(f"{args.file}: ok ({len(config.sinks)} sinks, engine {engine})")
    return EXIT_OK


def _checks(config: Config) -> list[Callable[[], str | None]]:
    """The checks past parsing, each raising ConfigError; the engine check returns its name."""
    from proxylog.config import serving_engine
    from proxylog.config.secrets import read_secret
    from proxylog.runtime import check_config

    def engine() -> str:
        from proxylog.config import check_workers

        name = serving_engine(config)
        check_workers(config)
        if name == "mitmproxy":
            from proxylog.mitm.master import proxy_modes

            proxy_modes(config)
        return name

    def metrics_token() -> None:
        if config.metrics.token_file or config.metrics.token_env:
            read_secret(config.metrics.token_file, config.metrics.token_env, "metrics")

    return [lambda: _check_paths(config), engine, lambda: check_config(config), metrics_token]


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    from dataclasses import replace

    from proxylog.app import serve
    from proxylog.config import MAX_WORKERS, check_workers, parse_listen, parse_upstream, serving_engine
    from proxylog.diagnostics import setup_logging
    from proxylog.redact import Redactor

    hold_signals()  # main did already for `proxylog serve`; again for any other caller
    # Flags are validated as the config keys they override, before the file is read.
    upstream = None if args.upstream is None else parse_upstream(args.upstream, "--upstream")
    listen = None if args.listen is None else parse_listen(args.listen, "--listen")
    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        raise ConfigError("--workers", f"must be between 1 and {MAX_WORKERS}, got {args.workers}")

    def flags(config: Config) -> Config:
        """The command-line overrides, applied at start and again to every reloaded config."""
        config = config.with_overrides(
            upstream=upstream,
            listen=listen,
            modes=tuple(args.modes) if args.modes else None,
            engine=args.engine,
            workers=args.workers,
        )
        if args.log_level:
            config = replace(config, log=replace(config.log, level=args.log_level))
        if args.worker is not None:
            from proxylog.workers.layout import worker_config

            config = worker_config(config, args.worker)
        return config

    config = flags(_load(args.config))
    check_workers(config)
    if serving_engine(config) == "mitmproxy":  # validate before anything starts
        from proxylog.mitm.master import proxy_modes

        proxy_modes(config)
    # The formatter runs on the log thread: it gets a Redactor of its own.
    listener = setup_logging(config.log, Redactor(config.redact).clean_text, args.worker)
    try:
        if config.workers > 1 and args.worker is None:
            from proxylog.workers import Supervisor

            supervisor = Supervisor(
                config, lambda index: _worker_argv(args, index), lambda: flags(_load(args.config))
            )
            return asyncio.run(supervisor.run())
        loop = _loop_factory(config)
        return asyncio.run(
            serve(config, enforce=args.enforce, flags=flags, worker=args.worker), loop_factory=loop
        )
    finally:
        # Closing the loop restored the default handlers: a signal arriving while the
        # process finishes exiting (a supervisor's or systemd's late SIGTERM) must not turn
        # a clean exit into death by signal.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        listener.stop()


def _worker_argv(args: argparse.Namespace, index: int) -> list[str]:
    """The command line of worker `index`: this `serve`, as the supervisor was given it."""
    argv = [sys.executable, "-m", "proxylog.cli", "serve", "--worker", str(index)]
    for flag, value in (
        ("--config", args.config),
        ("--upstream", args.upstream),
        ("--listen", args.listen),
        ("--engine", args.engine),
        ("--workers", args.workers),
        ("--log-level", args.log_level),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--enforce"] if args.enforce else [])


def _loop_factory(config: Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for the fast plane (about a fifth less CPU per request than asyncio's loop,
    benchmarks/fast_floor.py); asyncio's own for mitmproxy, which is not tested on uvloop."""
    from proxylog.config import serving_engine

    if serving_engine(config) != "fast":
        return None
    try:
        import uvloop
    except ImportError:  # an optional speed-up: the fast plane runs on asyncio's loop too
        return None
    return uvloop.new_event_loop


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(EXIT_OK)


def hold_signals() -> None:
    """Until `serve`'s master installs its own handlers: ignore SIGHUP, whose default action
    would kill the process silently (a logrotate or `systemctl reload` racing the start),
    and make SIGTERM/SIGINT exit 0 at once, since nothing has started that needs draining."""
    signal.signal(signal.SIGTERM, _exit_at_once)
    signal.signal(signal.SIGINT, _exit_at_once)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # last: once SIGHUP is ignored, all three are held


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # before the parser imports every subcommand (~0.5 s)
        hold_signals()
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as e:
        what = "argument" if e.path.startswith("--") else "configuration"
        print(f"proxylog: invalid {what}: {e}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
