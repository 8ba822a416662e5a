"""Client identity behind trusted proxies, and request ids."""

from __future__ import annotations

import ipaddress
import uuid

import pytest

from proxylog.identity import TrustedProxies, is_valid_request_id, new_request_id
from proxylog.net import normalize_ip

TRUSTED = TrustedProxies([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")])


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        ("203.0.113.7", ["1.2.3.4"], "203.0.113.7"),  # untrusted peer: XFF ignored
        ("10.0.0.5", [], "10.0.0.5"),  # trusted peer, no XFF
        ("10.0.0.5", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.5", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # rightmost untrusted wins
        ("10.0.0.5", ["6.6.6.6, 198.51.100.1, 10.9.9.9"], "198.51.100.1"),  # trusted hops skipped
        ("10.0.0.5", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # repeated headers joined
        ("10.0.0.5", ["10.1.1.1, 10.2.2.2"], "10.1.1.1"),  # all trusted: leftmost
        ("10.0.0.5", ["6.6.6.6, garbage"], "10.0.0.5"),  # garbage never names a client
        ("10.0.0.5", ["6.6.6.6, unknown, 10.3.3.3"], "10.3.3.3"),
        ("::ffff:10.0.0.5", ["198.51.100.1"], "198.51.100.1"),  # IPv4-mapped peer unwrapped
        ("2001:db8::1", ["2001:db8::2, 2600::1"], "2600::1"),
        ("10.0.0.5", [" 198.51.100.1 "], "198.51.100.1"),
        ("10.0.0.5", ["203.0.113.9:51514"], "203.0.113.9"),  # ip:port (Azure Application Gateway)
        ("10.0.0.5", ["[2600::1]:443"], "2600::1"),  # [v6]:port
        ("10.0.0.5", ["[2600::1]"], "2600::1"),
        ("10.0.0.5", ['"[2600::1]:4711"'], "2600::1"),  # quoted, as in RFC 7239
        ("10.0.0.5", ['"198.51.100.1:80"'], "198.51.100.1"),
        ("10.0.0.5", ["6.6.6.6, 10.9.9.9:8080"], "6.6.6.6"),  # a trusted hop with a port is skipped
        ("10.0.0.5", ["6.6.6.6, 1.2.3.4:123456"], "10.0.0.5"),  # not a port: garbage
        ("10.0.0.5", ["6.6.6.6, [1.2.3.4]:80"], "10.0.0.5"),  # brackets are for IPv6 only
        ("10.0.0.5", ["6.6.6.6, [2600::1]x"], "10.0.0.5"),
    ],
)
def test_resolve(peer: str, xff: list[str], client: str) -> None:
    """The client is the TCP peer unless trusted; then the rightmost untrusted XFF hop."""
    assert TRUSTED.resolve(peer, xff).ip == client


def test_no_trusted_proxies_means_the_peer() -> None:
    """With no trusted_proxies, X-Forwarded-For is never believed."""
    assert TrustedProxies([]).resolve("10.0.0.5", ["1.1.1.1"]).ip == "10.0.0.5"


def test_chain_runs_from_the_client_to_the_peer() -> None:
    """The chain forwarded to Puma holds only verified hops, client first."""
    identity = TRUSTED.resolve("10.0.0.5", ["6.6.6.6, 198.51.100.1, 10.9.9.9"])
    assert identity.chain == ("198.51.100.1", "10.9.9.9", "10.0.0.5")


def test_ports_never_reach_the_chain() -> None:
    """Hops are forwarded to Puma as bare addresses, whatever form the balancer wrote."""
    identity = TRUSTED.resolve("10.0.0.5", ["203.0.113.9:51514, [2001:db8::7]:443"])
    assert identity.chain == ("203.0.113.9", "2001:db8::7", "10.0.0.5")


def test_ipv4_mapped_trusted_networks_match_ipv4_peers() -> None:
    """A trusted network written IPv4-mapped (``::ffff:10.0.0.0/104``) trusts the IPv4 peers in it."""
    trusted = TrustedProxies([ipaddress.ip_network("::ffff:10.0.0.0/104")])
    assert trusted.resolve("::ffff:10.0.0.5", ["198.51.100.7"]).ip == "198.51.100.7"
    assert trusted.resolve("10.0.0.5", ["198.51.100.7"]).ip == "198.51.100.7"


def test_normalize_ip() -> None:
    """IPv4-mapped IPv6 is unwrapped; invalid text is returned unchanged."""
    assert normalize_ip("::ffff:192.0.2.1") == "192.0.2.1"
    assert normalize_ip("2001:DB8::1") == "2001:db8::1"
    assert normalize_ip("nonsense") == "nonsense"


def test_request_ids_are_uuid7_unique_sortable_and_valid() -> None:
    """Generated ids are UUIDv7 (RFC 9562), unique, time-ordered and well-formed."""
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(is_valid_request_id(i) for i in ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)  # the 48-bit millisecond prefix


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("abc", True),
        ("a-b_c@d", True),
        ("token=S17", False),  # Rails would strip the `=` and log a different id
        ("a.b", False),
        ("a:b", False),
        ("a+b", False),
        ("a/b", False),
        ("", False),
        ("a b", False),
        ("a\nb", False),
        ("é", False),
        ("x" * 128, True),
        ("x" * 129, False),
        ("<script>", False),
    ],
)
def test_request_id_validation(value: str, valid: bool) -> None:
    """Only short ids of safe characters are kept from clients."""
    assert is_valid_request_id(value) is valid
