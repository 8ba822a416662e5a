"""Sink specs: where records go, parsed from ``sinks:``; one parser per sink type."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from proxylog.config._reader import Fields, Node

Overflow = Literal["drop"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkSpec:
    """What every sink has: a type, a unique name, and its in-memory queue's bounds."""

    type: str
    name: str
    queue: int = 10_000
    batch: int = 512
    overflow: Overflow = "drop"


@dataclass(frozen=True, slots=True, kw_only=True)
class StdoutSpec(SinkSpec):
    """NDJSON on the process's standard output."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSpec(SinkSpec):
    """NDJSON appended to a file created 0640."""

    path: str


def _file(fields: Fields) -> dict[str, Any]:
    path = fields.require("path").string()
    return {"path": path, "name": f"file:{path}"}


# type -> (spec class, parser of the type's own keys returning spec kwargs incl. a default name)
_TYPES: dict[str, tuple[type[SinkSpec], Callable[[Fields], dict[str, Any]]]] = {
    "stdout": (StdoutSpec, lambda fields: {}),
    "file": (FileSpec, _file),
}
SINK_TYPES = tuple(_TYPES)


def parse_sink(node: Node) -> SinkSpec:
    """One ``sinks[i]`` entry; unknown types and keys are ConfigErrors naming the path."""
    if not isinstance(node.value, dict):
        node.fail("expected a mapping like {type: stdout}")
    kind = Node(node.value.get("type"), f"{node.path}.type").choice(SINK_TYPES)
    cls, parse_own = _TYPES[kind]
    fields = node.fields(frozenset(f.name for f in dataclasses.fields(cls)))
    kwargs: dict[str, Any] = {"type": kind, "name": kind, **parse_own(fields)}
    if (name := fields.get("name")) is not None:
        kwargs["name"] = name.string()
    if (queue := fields.get("queue")) is not None:
        kwargs["queue"] = queue.integer(min=1)
    if (batch := fields.get("batch")) is not None:
        kwargs["batch"] = batch.integer(min=1)
    if (overflow := fields.get("overflow")) is not None:
        kwargs["overflow"] = overflow.choice(("drop",))
    return cls(**kwargs)


def parse_sinks(node: Node) -> tuple[SinkSpec, ...]:
    """The ``sinks:`` list; sink names must be unique (file sinks default to ``file:PATH``)."""
    specs: list[SinkSpec] = []
    for item in node.items():
        spec = parse_sink(item)
        if any(s.name == spec.name for s in specs):
            item.fail(f"duplicate sink name {spec.name!r}; give one of them a `name:`")
        specs.append(spec)
    return tuple(specs)
