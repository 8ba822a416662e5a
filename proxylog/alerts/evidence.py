"""What proxylog saw of each client lately, for the context of an alert: first and last seen,
requests, and the most requested paths, taken from records after redaction.

`witness` runs on the event loop for every record while alerts are configured: one dict pop
and insert under an uncontended lock. Memory is bounded (clients, and paths per client); a
client quiet for `quiet` seconds starts afresh, so "first seen" is the start of its current
activity. Alert workers read a summary from their own thread under the same lock.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter

from proxylog.alerts.model import TOP_PATHS, Seen

MAX_CLIENTS = 4096
MAX_PATHS = 32  # distinct paths kept per client; later new paths count only as requests
QUIET = 3600.0


class _Client:
    __slots__ = ("first", "last", "paths", "requests")

    def __init__(self, ts: float) -> None:
        self.first = self.last = ts
        self.requests = 0
        self.paths: dict[str, int] = {}


class Evidence:
    """Recent activity per client IP, least recently seen forgotten first."""

    def __init__(self, max_clients: int = MAX_CLIENTS, quiet: float = QUIET) -> None:
        self.max_clients = max_clients
        self.quiet = quiet
        self._clients: dict[str, _Client] = {}  # insertion order = least recently seen first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._clients)

    def witness(self, ip: str, path: str, ts: float) -> None:
        """Count one request of `ip` for `path` (redacted) at `ts`. O(1), never raises."""
        with self._lock:
            clients = self._clients
            client = clients.pop(ip, None)
            if client is None or ts - client.last > self.quiet:
                client = _Client(ts)
                if len(clients) >= self.max_clients:
                    del clients[next(iter(clients))]
            clients[ip] = client
            client.requests += 1
            if ts > client.last:
                client.last = ts
            paths = client.paths
            count = paths.get(path)
            if count is not None:
                paths[path] = count + 1
            elif len(paths) < MAX_PATHS:
                paths[path] = 1

    def summary(self, key: str, *, networks: bool = True) -> Seen | None:
        """What was seen of the client `key` (an IP), or of every client inside it (a CIDR,
        with `networks`: that scan is for alert threads, not the event loop); None when
        nothing was, or for keys that are no client (``global``, a sink name)."""
        if "/" not in key:
            with self._lock:
                client = self._clients.get(key)
                return None if client is None else _summarize([client])
        if not networks:
            return None
        try:
            network = ipaddress.ip_network(key, strict=False)
        except ValueError:
            return None
        with self._lock:
            ips = list(self._clients)
        inside = [ip for ip in ips if _contains(network, ip)]
        with self._lock:
            found = [client for ip in inside if (client := self._clients.get(ip)) is not None]
            return _summarize(found) if found else None


def _contains(network: ipaddress.IPv4Network | ipaddress.IPv6Network, ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in network
    except ValueError:
        return False


def _summarize(clients: list[_Client]) -> Seen:
    """One Seen over several clients (call with the lock held: their dicts are live)."""
    paths: Counter[str] = Counter()
    for client in clients:
        paths.update(client.paths)
    top = sorted(paths.items(), key=lambda item: (-item[1], item[0]))[:TOP_PATHS]
    return Seen(
        requests=sum(client.requests for client in clients),
        first=min(client.first for client in clients),
        last=max(client.last for client in clients),
        paths=tuple(top),
        clients=len(clients),
    )
