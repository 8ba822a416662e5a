"""Where each worker process keeps what must never be shared between writers.

Every worker of `proxylog serve --workers N` runs the same config, rewritten here so that no
two processes write one file: its own state directory (state file, spools, quarantine,
control socket) under ``<state_dir>/workers/<index>``, and its own file for each file sink,
``access.log`` becoming ``access-w<index>.log``. One writer per file keeps every line whole
and every integrity chain linear without a lock or a writer process on the hot path; stdout
is different: the supervisor relays the workers' lines to its own stdout, whole.
"""

from __future__ import annotations

import os
from dataclasses import replace

from proxylog.config import Config, FileSpec, SinkSpec


def worker_state_dir(config: Config, index: int) -> str:
    return os.path.join(config.state_dir, "workers", str(index))


def worker_socket(config: Config, index: int) -> str:
    """The private control socket the supervisor reaches worker `index` on."""
    return os.path.join(worker_state_dir(config, index), "control.sock")


def worker_path(path: str, index: int) -> str:
    """``/var/log/proxylog/access.log`` → ``/var/log/proxylog/access-w0.log``."""
    head, tail = os.path.split(path)
    stem, dot, suffix = tail.rpartition(".") if "." in tail.lstrip(".") else (tail, "", "")
    return os.path.join(head, f"{stem}-w{index}{dot}{suffix}")


def _worker_sink(spec: SinkSpec, index: int) -> SinkSpec:
    if spec.spool is not None:
        spec = replace(spec, spool=os.path.join(spec.spool, f"w{index}"))
    if spec.quarantine is not None:
        spec = replace(spec, quarantine=worker_path(spec.quarantine, index))
    if isinstance(spec, FileSpec):
        spec = replace(spec, path=worker_path(spec.path, index))
    return spec


def worker_config(config: Config, index: int) -> Config:
    """`config` as worker `index` runs it: its own state directory, control socket and files;
    no TCP control port, metrics endpoint or file watch of its own (the supervisor has them)."""
    return replace(
        config,
        state_dir=worker_state_dir(config, index),
        control=replace(config.control, socket=worker_socket(config, index), tcp=None, watch=False),
        metrics=replace(config.metrics, listen=None),
        sinks=tuple(_worker_sink(spec, index) for spec in config.sinks),
    )
