"""Who a request counts against: the client address, parsed once and cached, and the keys rules
count it under (the IP, its network at a prefix, or one global key)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from proxylog.config.rule_specs import KeySpec
from proxylog.net import parse_ip, unmap_network

GLOBAL_KEY = "*"


class Client:
    """A parsed client address with what does not change between its requests: whether it is
    allowlisted, on intel lists. `generation` says which allowlist/intel it saw."""

    __slots__ = ("_public", "allowed", "generation", "intel", "ip", "nets", "value", "version")

    def __init__(self, text: str) -> None:
        try:  # the common case, ~20x cheaper than ipaddress
            packed = socket.inet_pton(socket.AF_INET, text)
            self.ip, self.version, self.value = (
                socket.inet_ntop(socket.AF_INET, packed),
                4,
                int.from_bytes(packed),
            )
        except OSError:
            addr = parse_ip(text)
            self.ip = text if addr is None else str(addr)
            self.version = 0 if addr is None else addr.version
            self.value = 0 if addr is None else int(addr)
        self._public: bool | None = None
        self.allowed = False
        self.intel: tuple[int, ...] = ()  # indexes of the intel lists it is on
        self.generation = -1
        self.nets: dict[int, str] = {}

    @property
    def public(self) -> bool:
        """A globally routable address (not loopback, private, CGNAT, link-local, reserved...)."""
        if self._public is None:
            self._public = (
                bool(self.version)
                and ipaddress.ip_address(
                    self.value if self.version == 4 else ipaddress.IPv6Address(self.value)
                ).is_global
            )
        return self._public

    def net(self, prefix: int) -> str:
        """The key of this client's network at `prefix` (the bare IP for a full-length prefix)."""
        if not self.version or prefix >= (32 if self.version == 4 else 128):
            return self.ip
        key = self.nets.get(prefix)
        if key is None:
            key = self.nets[prefix] = network_key(self.version, self.value, prefix)
        return key


def network_key(version: int, value: int, prefix: int) -> str:
    """``203.0.113.0/24`` or ``2001:db8::/64``; a host prefix gives the bare address."""
    bits = 32 if version == 4 else 128
    if prefix >= bits:
        return str(ipaddress.ip_address(value) if version == 4 else ipaddress.IPv6Address(value))
    masked = value >> (bits - prefix) << (bits - prefix)
    net: ipaddress.IPv4Network | ipaddress.IPv6Network = (
        ipaddress.IPv4Network((masked, prefix)) if version == 4 else ipaddress.IPv6Network((masked, prefix))
    )
    return str(net)


def normalize_key(text: str) -> str:
    """An operator's ban key as stored: a bare IP, or a CIDR in canonical form (IPv4-mapped
    IPv6 unwrapped; ``1.2.3.4/32`` → ``1.2.3.4``). Raises ValueError when it is neither."""
    text = text.strip()
    if "/" not in text:
        addr = parse_ip(text)
        if addr is None:
            raise ValueError(f"not an IP address or CIDR: {text!r}")
        return str(addr)
    net = unmap_network(ipaddress.ip_network(text, strict=False))
    return network_key(net.version, int(net.network_address), net.prefixlen)


KeyFunc = Callable[[Client], tuple[str, ...]]


def build_keys(spec: KeySpec) -> KeyFunc:
    """The function giving a client's keys for a rule: its own key, then its tier's if any."""
    return _KEYS[spec.kind](spec)


def _client_keys(spec: KeySpec) -> KeyFunc:
    return lambda client: (client.ip,)


def _global_keys(spec: KeySpec) -> KeyFunc:
    keys = (GLOBAL_KEY,)
    return lambda client: keys


def _net_keys(spec: KeySpec) -> KeyFunc:
    prefixes = {4: spec.v4_prefix, 6: spec.v6_prefix}
    tiers = {4: spec.tier_v4, 6: spec.tier_v6}

    def keys(client: Client) -> tuple[str, ...]:
        if not client.version:
            return (client.ip,)
        own = client.net(prefixes[client.version])
        tier = tiers[client.version]
        return (own,) if tier is None else (own, client.net(tier))

    return keys


_KEYS: dict[str, Callable[[KeySpec], KeyFunc]] = {
    "client": _client_keys,
    "client_net": _net_keys,
    "global": _global_keys,
}
