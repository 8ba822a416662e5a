"""`proxylog verify`: check the integrity chain of file sink output."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from proxylog.errors import ConfigError
from proxylog.sinks.integrity import read_key, verify

EXIT_INTACT = 0
EXIT_TAMPERED = 1
EXIT_USAGE = 2


def register(commands: Any) -> None:
    """Add `proxylog verify FILE... [--key-file F]` to the `proxylog` parser."""
    parser = commands.add_parser(
        "verify",
        help="check the integrity chain of file sink output",
        description=(
            "Check an HMAC-chained file (several files: oldest first, e.g. rotated ones). Exit 0 "
            "intact, 1 tampered (edit, deletion, reorder or truncation; the first bad sequence "
            "number is reported), 2 usage error."
        ),
    )
    parser.add_argument("files", metavar="FILE", nargs="+")
    parser.add_argument("--key-file", metavar="F", help="the sink's key file (without it: structure only)")
    parser.add_argument(
        "--open",
        dest="allow_open",
        action="store_true",
        help="the last file is still being written: a missing seal at its end is not a truncation",
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        key = read_key(args.key_file, "--key-file") if args.key_file else None
        started = time.monotonic()
        finding = verify(args.files, key, allow_open=args.allow_open)
    except ConfigError as e:
        print(f"proxylog verify: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"proxylog verify: cannot read {e.filename}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(orjson.dumps(finding.as_dict()).decode())
    elif finding.kind is None:
        print(f"ok: {finding.records} records intact ({time.monotonic() - started:.2f}s); {finding.message}")
    else:
        seq = "?" if finding.seq is None else finding.seq
        print(f"TAMPERED: {finding.kind} at seq {seq} ({finding.file}:{finding.line}): {finding.message}")
    if key is None:
        print(
            "proxylog verify: warning: no --key-file, record contents were not authenticated", file=sys.stderr
        )
    return EXIT_INTACT if finding.kind is None else EXIT_TAMPERED
