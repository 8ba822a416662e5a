"""A client of the control API: one JSON request per call, over the Unix socket or TCP.
`proxylog ctl` uses it, and so does the supervisor of several workers to reach each one."""

from __future__ import annotations

import http.client
import socket
from typing import Any

import orjson

# The header a supervisor names the operator in when it forwards a command to a worker.
ON_BEHALF_OF = "X-Proxylog-On-Behalf-Of"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class ControlClient:
    """One JSON request per call to the control API; raises OSError when unreachable."""

    def __init__(
        self,
        socket_path: str | None = None,
        tcp: tuple[str, int] | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.socket_path = socket_path
        self.tcp = tcp
        self.token = token
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        args: dict[str, Any] | None = None,
        on_behalf_of: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """`on_behalf_of` names the operator a supervisor forwards a command for (the worker
        audits that name, and believes it only from its own supervisor)."""
        conn: http.client.HTTPConnection
        if self.tcp is not None:
            conn = http.client.HTTPConnection(self.tcp[0], self.tcp[1], timeout=self.timeout)
        else:
            conn = _UnixHTTPConnection(self.socket_path or "", self.timeout)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if on_behalf_of:
            headers[ON_BEHALF_OF] = on_behalf_of
        try:
            conn.request(method, path, orjson.dumps(args) if args is not None else None, headers)
            response = conn.getresponse()
            payload = orjson.loads(response.read() or b"{}")
        finally:
            conn.close()
        return response.status, payload
