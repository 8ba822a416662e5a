"""Who the client is: the TCP peer, unless the peer is a trusted proxy (then X-Forwarded-For)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import NamedTuple

from cachetools import LRUCache

from proxylog.net import CidrSet, IPNetwork, address_value, normalize_ip, parse_hop, unmap_network


class ClientIdentity(NamedTuple):
    """`ip` is the client; `chain` is the forwarding chain from it to the peer, both trusted.
    `resolved` is False when the client is itself a trusted proxy (X-Forwarded-For was missing
    or named no address behind it): rules then never count, block or ban it, since that would
    hit everyone behind the proxy."""

    ip: str
    peer: str
    chain: tuple[str, ...]
    resolved: bool = True


class TrustedProxies:
    """Resolves the real client behind a CIDR list of trusted proxies.

    Only when the TCP peer is trusted is X-Forwarded-For read, right to left: trusted hops
    are skipped and the first untrusted hop is the client. A hop may carry a port
    (`parse_hop`). A hop that is not an address stops the walk and the last trusted hop is
    blamed, so garbage can never name a client; the rule engine then treats the request as
    from an unresolved client, never counting or banning the proxy. IPv4-mapped networks
    (``::ffff:10.0.0.0/104``) are taken as the IPv4 networks they map.
    """

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks = tuple(unmap_network(net) for net in networks)
        self._set = CidrSet(self.networks)
        self._cache: LRUCache[str, bool] = LRUCache(maxsize=4096)
        self._peers: LRUCache[str, str] = LRUCache(maxsize=4096)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def is_trusted(self, ip: str) -> bool:
        if not self.networks:
            return False
        trusted = self._cache.get(ip)
        if trusted is None:
            value = address_value(ip)
            trusted = value is not None and self._set.contains(*value)
            self._cache[ip] = trusted
        return trusted

    def resolve(self, peer: str, forwarded_for: Iterable[str]) -> ClientIdentity:
        """The client for a request from `peer` carrying these X-Forwarded-For header values."""
        if ":" in peer:  # IPv6, possibly IPv4-mapped; IPv4 peers from a socket are canonical
            normalized = self._peers.get(peer)
            if normalized is None:
                normalized = self._peers[peer] = normalize_ip(peer)
            peer = normalized
        if not self.networks or not self.is_trusted(peer):
            return ClientIdentity(peer, peer, (peer,))
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        chain = [peer]
        for hop in reversed(hops):
            addr = parse_hop(hop)
            if addr is None:
                break
            ip = str(addr)
            chain.append(ip)
            if not self.is_trusted(ip):
                break
        chain.reverse()
        client = chain[0]
        return ClientIdentity(client, peer, tuple(chain), not self.is_trusted(client))


# What Rails' ActionDispatch::RequestId keeps (it strips anything outside [\w\-@]): an id
# with other characters would be logged by Rails differently from the record.
_REQUEST_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_@"
MAX_REQUEST_ID = 128
_RANDOM_A = 0xFFF << 62
_RANDOM_B = (1 << 62) - 1


def new_request_id() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, so ids sort by arrival, and 74
    random bits. Rails' own request ids are UUIDs, so apps parse these unchanged."""
    rand = random.getrandbits(80)  # ids need uniqueness, not secrecy; reseeded after fork
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76
        | (rand & _RANDOM_A) << 2
        | 0b10 << 62
        | rand & _RANDOM_B
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_valid_request_id(value: str) -> bool:
    """True for 1 to 128 ASCII letters, digits, ``_``, ``-`` and ``@``: ids Rails keeps as they are."""
    return 0 < len(value) <= MAX_REQUEST_ID and not value.strip(_REQUEST_ID_CHARS)
