"""Threat-intel lists: IP/CIDR files in netset, plain, Spamhaus or JSON-lines form, and a CIDR
set whose lookup is one bisect over merged ranges (well under 2 µs with 100k entries)."""

from __future__ import annotations

import bisect
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import orjson

from proxylog.config._reader import IPNetwork
from proxylog.config.rule_specs import IntelSpec

logger = logging.getLogger("proxylog")


Range = tuple[int, int, int]  # (IP version, first address, last address) as integers


def network_range(text: str) -> Range:
    """The range of an IP or CIDR (host bits ignored; IPv4-mapped IPv6 becomes IPv4); raises
    ValueError. Parses with inet_pton: ~15x faster than ipaddress for 100k-line lists."""
    address, sep, length = text.partition("/")
    try:
        if ":" in address:
            version, bits, value = (
                6,
                128,
                int.from_bytes(socket.inet_pton(socket.AF_INET6, address.split("%")[0])),
            )
        else:
            version, bits, value = 4, 32, int.from_bytes(socket.inet_pton(socket.AF_INET, address))
    except OSError:
        raise ValueError(f"not an IP address: {address!r}") from None
    prefix = bits
    if sep:
        if not length.isdigit() or int(length) > bits:
            raise ValueError(f"bad prefix length in {text!r}")
        prefix = int(length)
    if version == 6 and value >> 32 == 0xFFFF:  # ::ffff:a.b.c.d
        version, bits, value, prefix = 4, 32, value & 0xFFFFFFFF, max(0, prefix - 96)
    host = bits - prefix
    first = value >> host << host
    return version, first, first + (1 << host) - 1


class CidrSet:
    """Membership of (version, integer address) in a set of networks, via merged sorted ranges."""

    __slots__ = ("_ends4", "_ends6", "_starts4", "_starts6", "size")

    def __init__(self, networks: Iterable[IPNetwork | Range]) -> None:
        ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        size = 0
        for net in networks:
            if isinstance(net, tuple):
                version, first, last = net
            else:
                version, first = net.version, int(net.network_address)
                last = first + net.num_addresses - 1
            ranges[version].append((first, last))
            size += 1
        self.size = size
        self._starts4, self._ends4 = _merge(ranges[4])
        self._starts6, self._ends6 = _merge(ranges[6])

    def contains(self, version: int, value: int) -> bool:
        """True if the address (4 or 6, as an integer) is in any of the networks."""
        if version == 4:
            i = bisect.bisect_right(self._starts4, value) - 1
            return i >= 0 and value <= self._ends4[i]
        i = bisect.bisect_right(self._starts6, value) - 1
        return i >= 0 and value <= self._ends6[i]

    def __len__(self) -> int:
        return self.size


def _merge(spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Sorted, disjoint ranges as parallel lists of first and last addresses."""
    starts: list[int] = []
    ends: list[int] = []
    for first, last in sorted(spans):
        if ends and first <= ends[-1] + 1:
            ends[-1] = max(ends[-1], last)
        else:
            starts.append(first)
            ends.append(last)
    return starts, ends


def _token(line: str, comments: str) -> str | None:
    for mark in comments:
        line = line.split(mark, 1)[0]
    parts = line.split()
    return parts[0] if parts else None


def _tokens(comments: str) -> Callable[[str], str | None]:
    return lambda line: _token(line, comments)


def _json_token(line: str) -> str | None:
    line = line.strip()
    if not line.startswith("{"):
        return _token(line, "#;")
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "{invalid"
    if not isinstance(doc, dict) or doc.get("type") == "metadata":
        return None
    value = doc.get("cidr") or doc.get("ip") or doc.get("prefix")
    return value if isinstance(value, str) else None


# How each format finds the address on a line; None means the line holds none.
TOKENIZERS: dict[str, Callable[[str], str | None]] = {
    "netset": _tokens("#"),  # FireHOL: `# comment`, then one IP or CIDR a line
    "plain": _tokens("#"),
    "spamhaus": _tokens(";#"),  # DROP/EDROP: `1.10.16.0/20 ; SBL256894`, with or without the comment
    "json": _json_token,  # Spamhaus drop_v4.json: {"cidr": "…", "sblid": "…"} a line
    "auto": _json_token,
}


@dataclass(frozen=True, slots=True)
class Parsed:
    """A list file's address ranges and the count of lines that held something else."""

    ranges: tuple[Range, ...]
    invalid: int


def parse_intel(lines: Iterable[str], fmt: str = "auto") -> Parsed:
    """Address ranges from a list's lines, in a format of TOKENIZERS."""
    tokenize = TOKENIZERS[fmt]
    ranges: list[Range] = []
    invalid = 0
    for line in lines:
        token = tokenize(line)
        if token is None:
            continue
        try:
            ranges.append(network_range(token))
        except ValueError:
            invalid += 1
    return Parsed(tuple(ranges), invalid)


def _read_lines(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        yield from f


class IntelList:
    """One threat-intel list, loaded from its file and reloaded when its refresh interval has
    passed and the file changed. A file that fails to load keeps the previous entries."""

    def __init__(self, spec: IntelSpec, now: float, previous: IntelList | None = None) -> None:
        """Load the file now (blocking), unless `previous` is the same list already loaded.
        Raises OSError when the first load cannot read the file."""
        self.spec = spec
        self.hits = 0
        self.errors = 0
        self.cidrs = CidrSet(())
        self.invalid = 0
        self.loaded_at = now
        self._stamp: tuple[float, int] | None = None
        self.next_refresh = now + spec.refresh
        if previous is not None and previous.spec == spec:
            self.cidrs, self.invalid = previous.cidrs, previous.invalid
            self.loaded_at, self._stamp = previous.loaded_at, previous._stamp
            self.next_refresh = previous.next_refresh
        else:
            self._load(now)

    def _load(self, now: float) -> None:
        stat = os.stat(self.spec.file)
        parsed = parse_intel(_read_lines(self.spec.file), self.spec.format)
        if not parsed.ranges and parsed.invalid:
            raise ValueError(f"{self.spec.file}: no address in {parsed.invalid} lines")
        self.cidrs = CidrSet(parsed.ranges)
        self.invalid = parsed.invalid
        self.loaded_at = now
        self._stamp = (stat.st_mtime, stat.st_size)

    def refresh(self, now: float) -> bool:
        """Reload if due and the file changed; True if the entries were replaced. Never raises:
        an unreadable or empty file is logged, counted and the old entries stay."""
        if now < self.next_refresh:
            return False
        self.next_refresh = now + self.spec.refresh
        try:
            stat = os.stat(self.spec.file)
            if (stat.st_mtime, stat.st_size) == self._stamp:
                return False
            self._load(now)
        except (OSError, ValueError) as e:
            self.errors += 1
            logger.warning("intel list %s: keeping %d entries: %s", self.spec.name, len(self.cidrs), e)
            return False
        return True

    def stats(self) -> dict[str, object]:
        """Size, bad lines, last load, hits and reload errors, for metrics."""
        return {
            "entries": len(self.cidrs),
            "invalid_lines": self.invalid,
            "loaded_at": self.loaded_at,
            "hits": self.hits,
            "errors": self.errors,
        }
