"""Typed access to parsed YAML that names the key path in every error."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from typing import Any, NoReturn
from urllib.parse import urlsplit

import yaml

from proxylog.errors import ConfigError
from proxylog.net import IPNetwork, unmap_network

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
# A compound duration such as ``1h30m`` or ``1m30s``: units from largest to smallest, once each.
_DURATION_PARTS = re.compile(r"^\s*(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


def parse_duration(text: str | float) -> float:
    """Seconds from ``250ms``, ``60s``, ``5m``, ``1h``, ``1d``, a compound such as ``1m30s`` or
    ``1h30m``, or a bare number; raises ValueError."""
    if isinstance(text, bool):
        raise ValueError(text)
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text)
    if match:
        return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not _DURATION_PARTS.match(text):
        raise ValueError(text)
    parts = [(float(n), _DURATION_UNITS[unit]) for n, unit in _DURATION_PART.findall(text)]
    scales = [scale for _, scale in parts]
    if scales != sorted(set(scales), reverse=True):  # 30s1m, 1m1m: a typo, not a duration
        raise ValueError(text)
    return sum(n * scale for n, scale in parts)


def parse_size(text: str | int) -> int:
    """Bytes from ``512``, ``4k``, ``1m``, ``100MB``, ``2GiB``; raises ValueError."""
    if isinstance(text, bool):
        raise ValueError(text)
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(text)
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def display_url(text: str) -> str:
    """`text` without any ``user:password@``, query or fragment: what a sink's default name,
    status and error messages may show of a URL (even one urlsplit would refuse)."""
    text = re.split(r"[?#]", text.strip(), maxsplit=1)[0]
    scheme, sep, rest = text.partition("://")
    if sep and "@" in rest:
        rest = rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6, ``:PORT`` for all interfaces); raises ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(text)
    return host, int(port_text)


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping key given twice, at any depth: plain YAML keeps the
    last one silently, so a second ``redact:`` block would drop the first one's keys.
    Raises ConfigError naming the key path (after `key_prefix`) and both lines."""

    key_prefix = ""

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            self._refuse_duplicates(node, self.key_prefix, set())
        return node

    def _refuse_duplicates(self, node: yaml.Node, path: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias of a node already checked (or a recursive one)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._refuse_duplicates(item, f"{path}[{index}]", seen)
            return
        if not isinstance(node, yaml.MappingNode):
            return
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # keys merged in by `<<:` may be overridden
                continue
            child = path
            if isinstance(key_node, yaml.ScalarNode):  # scalars construct to hashable keys
                key = self.construct_object(key_node)
                child = f"{path}.{key}" if path else str(key)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise ConfigError(
                        child, f"duplicate key: given at line {lines[key]} and again at line {line}"
                    )
                lines[key] = line
            self._refuse_duplicates(value_node, child, seen)


def load_yaml(text: str, prefix: str = "", name: str | None = None) -> Any:
    """Parse one YAML document with `StrictLoader`; raises yaml.YAMLError for bad syntax (its
    marks name the file `name`, when given) and ConfigError (key path after `prefix`) for a
    duplicate key."""
    loader = StrictLoader(text)
    if name is not None:
        loader.name = name
    loader.key_prefix = prefix
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class Node:
    """A YAML value and the key path it came from; accessors validate and raise ConfigError."""

    __slots__ = ("path", "value")

    def __init__(self, value: Any, path: str = "") -> None:
        self.value = value
        self.path = path

    def fail(self, message: str) -> NoReturn:
        raise ConfigError(self.path, message)

    def _child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def fields(self, allowed: set[str] | frozenset[str]) -> Fields:
        """This node as a mapping whose keys must all be in `allowed`."""
        if not isinstance(self.value, dict):
            self.fail(f"expected a mapping, got {_describe(self.value)}")
        for key in self.value:
            if not isinstance(key, str):
                self.fail(f"keys must be strings, got {key!r}")
            if key not in allowed:
                self._unknown_key(key, allowed)
        return Fields(self)

    def _unknown_key(self, key: str, allowed: set[str] | frozenset[str]) -> NoReturn:
        known = ", ".join(sorted(allowed))
        raise ConfigError(self._child_path(key), f"unknown key (known keys: {known})")

    def items(self) -> Iterator[Node]:
        """The elements of a list (a single scalar counts as a one-element list)."""
        values = self.value if isinstance(self.value, list) else [self.value]
        if isinstance(self.value, dict):
            self.fail(f"expected a list, got {_describe(self.value)}")
        for index, value in enumerate(values):
            yield Node(value, self._child_path(index) if isinstance(self.value, list) else self.path)

    def string(self, *, allow_empty: bool = False) -> str:
        if not isinstance(self.value, str) or isinstance(self.value, bool):
            self.fail(f"expected a string, got {_describe(self.value)}")
        if not allow_empty and not self.value.strip():
            self.fail("must not be empty")
        return self.value

    def strings(self) -> tuple[str, ...]:
        return tuple(item.string() for item in self.items())

    def header_names(self) -> tuple[str, ...]:
        """A list of HTTP field names (RFC 9110 tokens), lowercased, duplicates dropped."""
        names = []
        for item in self.items():
            name = item.string().strip().lower()
            if not _HEADER_NAME.fullmatch(name):
                item.fail(f"not a valid header name: {item.value!r}")
            names.append(name)
        return tuple(dict.fromkeys(names))

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            self.fail(f"expected true or false, got {_describe(self.value)}")
        return self.value

    def integer(self, *, min: int | None = None, max: int | None = None) -> int:
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            self.fail(f"expected an integer, got {_describe(self.value)}")
        self._check_range(self.value, min, max)
        return self.value

    def number(self, *, min: float | None = None, max: float | None = None) -> float:
        if not isinstance(self.value, int | float) or isinstance(self.value, bool):
            self.fail(f"expected a number, got {_describe(self.value)}")
        self._check_range(self.value, min, max)
        return float(self.value)

    def _check_range(self, value: float, low: float | None, high: float | None) -> None:
        if low is not None and value < low:
            self.fail(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            self.fail(f"must be at most {high}, got {value}")

    def duration(self, *, min: float = 0.0) -> float:
        """Seconds; accepts ``250ms``, ``60s``, ``5m``, ``1h``, ``1d``, ``1m30s`` or a bare number."""
        try:
            seconds = parse_duration(self.value)
        except (ValueError, TypeError):
            self.fail(f"expected a duration like 60s, 5m, 1h or 1m30s, got {self.value!r}")
        if seconds < min:
            self.fail(f"must be at least {min:g}s, got {self.value!r}")
        return seconds

    def size(self, *, min: int = 0) -> int:
        """Bytes; accepts ``512``, ``4k``, ``1m``, ``100MB``, ``2GiB``."""
        try:
            size = parse_size(self.value)
        except (ValueError, TypeError):
            self.fail(f"expected a size like 4k, 1m or 100MB, got {self.value!r}")
        if size < min:
            self.fail(f"must be at least {min} bytes, got {self.value!r}")
        return size

    def choice[T: str](self, choices: tuple[T, ...]) -> T:
        value = self.string()
        for choice in choices:
            if value == choice:
                return choice
        self.fail(f"expected one of {', '.join(choices)}, got {value!r}")

    def network(self) -> IPNetwork:
        """A CIDR or a single address (as /32 or /128); IPv4-mapped IPv6 becomes IPv4."""
        try:
            return unmap_network(ipaddress.ip_network(self.string().strip(), strict=False))
        except ValueError:
            self.fail(f"expected an IP address or CIDR like 10.0.0.0/8, got {self.value!r}")

    def networks(self) -> tuple[IPNetwork, ...]:
        return tuple(item.network() for item in self.items())

    def host_port(self) -> tuple[str, int]:
        try:
            return parse_host_port(self.string())
        except ValueError:
            self.fail(f"expected HOST:PORT like 127.0.0.1:8080, got {self.value!r}")

    def url(
        self,
        schemes: tuple[str, ...],
        *,
        hint: str = "",
        example: str = "http://127.0.0.1:3000",
        need_port: bool = False,
    ) -> str:
        """A URL of one of `schemes` with a host (and a port, with `need_port`). Credentials
        (``user:password@``) are refused (`hint` says where they go instead): they would show
        wherever the URL does. Errors never repeat them or the query."""
        text = self.string().strip()
        shown = display_url(text)
        expected = (
            f"expected {', '.join(f'{s}://' for s in schemes[:-1])} or {schemes[-1]}://HOST:PORT"
            if need_port
            else f"expected a {'/'.join(schemes)} URL"
        )
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            self.fail(f"{expected}, got {shown!r}")
        if parts.scheme not in schemes or not parts.hostname or (need_port and port is None):
            self.fail(f"{expected} like {example}, got {shown!r}")
        if "@" in parts.netloc:
            self.fail(
                f"must not carry a user or password ({parts.scheme}://…@{parts.hostname}): it would"
                f" show in names, status and logs{hint and '; '}{hint}"
            )
        return text


def optional[T](node: Node | None, parse: Callable[[Node], T], default: T) -> T:
    """`parse(node)` for a key that is present, else `default`."""
    return default if node is None else parse(node)


class Fields:
    """The keys of one mapping node; `get` returns child nodes or None when absent."""

    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node

    def __contains__(self, key: str) -> bool:
        return key in self.node.value and self.node.value[key] is not None

    def get(self, key: str) -> Node | None:
        if key not in self:
            return None
        return Node(self.node.value[key], self.node._child_path(key))

    def require(self, key: str) -> Node:
        node = self.get(key)
        if node is None:
            raise ConfigError(self.node._child_path(key), "is required")
        return node

    def or_empty(self, key: str, empty: Any) -> Node:
        """The child, or a node holding `empty` at the child's path."""
        return self.get(key) or Node(empty, self.node._child_path(key))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
