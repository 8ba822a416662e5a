"""Checking documents against the ECS field reference in tests/data/ecs_flat.yml: every field
an ECS field of the right type, or proxylog's own under `proxylog.*`."""

from __future__ import annotations

import datetime
import functools
import ipaddress
from pathlib import Path
from typing import Any

import yaml

from proxylog.record import DATE_KEYS, SCHEMA_VERSION

ECS_FLAT = Path(__file__).parent / "data" / "ecs_flat.yml"
CUSTOM = "proxylog."
_STRING = frozenset({"keyword", "wildcard", "constant_keyword", "match_only_text", "text"})
_INTEGER = frozenset({"long", "integer", "short", "byte", "unsigned_long"})
_NUMBER = frozenset({"float", "double", "scaled_float", "half_float"})
_OPEN = frozenset({"object", "flattened", "nested"})  # any sub-keys allowed below these


@functools.cache
def fields() -> dict[str, dict[str, Any]]:
    """The ECS fields by flat name (loaded once per test session)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with ECS_FLAT.open(encoding="utf-8") as f:
        return dict(yaml.load(f, Loader=loader))


def flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted paths of a nested or flat document (dotted keys in a nested one, such as the
    integrity suffix, expand the way Elasticsearch expands them)."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_date(value: Any) -> bool:
    if not isinstance(value, str) or not value.endswith("Z"):
        return False
    try:
        datetime.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return isinstance(value, str)


def _fits(kind: str, value: Any) -> bool:
    if kind in _STRING:
        return isinstance(value, str)
    if kind in _INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in _NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "date":
        return _is_date(value)
    if kind == "ip":
        return _is_ip(value)
    return False


def _open_parent(name: str, ecs: dict[str, dict[str, Any]]) -> bool:
    parts = name.split(".")
    return any(ecs.get(".".join(parts[:n]), {}).get("type") in _OPEN for n in range(1, len(parts)))


def problems(doc: dict[str, Any]) -> list[str]:
    """Everything in `doc` that does not conform; [] when it does."""
    ecs = fields()
    found = []
    values = flat(doc)
    for required in ("@timestamp", "ecs.version", "event.kind", "proxylog.schema_version"):
        if required not in values:
            found.append(f"{required}: missing")
    if values.get("proxylog.schema_version") not in (None, SCHEMA_VERSION):
        found.append(f"proxylog.schema_version: {values['proxylog.schema_version']!r}")
    for name, value in values.items():
        if name.startswith(CUSTOM):
            leaf = name.rsplit(".", 1)[-1]
            if leaf in DATE_KEYS and value is not None and not _is_date(value):
                found.append(f"{name}: a time inside proxylog.* must be an RFC 3339 date, got {value!r}")
            continue
        spec = ecs.get(name)
        if spec is None:
            if not _open_parent(name, ecs):
                found.append(f"{name}: not an ECS field (proxylog's own fields go under proxylog.*)")
            continue
        is_array = "array" in (spec.get("normalize") or [])
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) != is_array:
            found.append(f"{name}: ECS expects {'an array' if is_array else 'a single value'}, got {value!r}")
        for item in items:
            if not _fits(spec["type"], item):
                found.append(f"{name}: {item!r} is not an ECS {spec['type']}")
        allowed = {a["name"]: a for a in spec.get("allowed_values") or []}
        if allowed:
            found += [f"{name}: {item!r} is not an allowed value" for item in items if item not in allowed]
    found += _category_types(values, ecs)
    return found


def _category_types(values: dict[str, Any], ecs: dict[str, dict[str, Any]]) -> list[str]:
    """Each event.type must be one ECS expects for at least one of the event's categories."""
    categories = values.get("event.category") or []
    types = values.get("event.type") or []
    if not categories or not isinstance(categories, list) or not isinstance(types, list):
        return []
    expected: set[str] = set()
    for allowed in ecs["event.category"]["allowed_values"]:
        if allowed["name"] in categories:
            expected.update(allowed.get("expected_event_types") or [])
    return [
        f"event.type: {t!r} is not expected for categories {categories}" for t in types if t not in expected
    ]


def assert_ecs(doc: dict[str, Any]) -> None:
    """Fail with every non-conforming field of `doc`."""
    found = problems(doc)
    assert not found, "\n".join([*found, f"in {doc}"])
