"""`proxylog verify`: check the integrity chain of file sink output."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import orjson

from proxylog.errors import ConfigError
from proxylog.sinks.integrity import Finding, read_key, verify

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


def _writers(path: str) -> list[int]:
    """Pids of processes (those /proc lets us see) holding `path` open; Linux only."""
    try:
        target = os.stat(path)
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []
    found = []
    for pid in pids:
        try:
            fds = os.scandir(f"/proc/{pid}/fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    st = os.stat(fd.path)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                    found.append(int(pid))
                    break
    return found


def _open_file_hint(args: argparse.Namespace, key: bytes | None, finding: Finding) -> str | None:
    """For a "truncation" that is only a missing seal at the end of the last file: say whether
    a process still has it open, and that --open checks a file still being written."""
    if args.allow_open or finding.kind != "truncation" or finding.file != args.files[-1]:
        return None
    if verify(args.files, key, allow_open=True).kind is not None:
        return None  # cut mid-line, or something else is wrong too
    writers = [pid for pid in _writers(finding.file) if pid != os.getpid()]
    if writers:
        return (
            f"{finding.file} is open by pid {', '.join(map(str, writers))}: a file still being written "
            "has no seal yet; pass --open to check it as a live file"
        )
    return (
        f"{finding.file} ends at a complete line without its seal: if proxylog is still writing it, "
        "pass --open; if not, its tail (and the seal) is missing"
    )


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
        if hint := _open_file_hint(args, key, finding):
            print(f"proxylog verify: {hint}", file=sys.stderr)
    if key is None:
        print(
            "proxylog verify: warning: no --key-file, record contents were not authenticated", file=sys.stderr
        )
    return EXIT_INTACT if finding.kind is None else EXIT_TAMPERED
