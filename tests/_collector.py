"""A small real HTTP log collector for tests: NDJSON, Elasticsearch/OpenSearch ``_bulk`` and Loki
push endpoints on a free loopback port, switchable down (connections refused), 503 or 4xx, and
recording everything it accepted.

It imitates the parts of Elasticsearch and Loki that the http sink relies on (``_bulk``
per-item statuses with 409 for an existing ``_id``; Loki's 204 and 400): real Elasticsearch
and Loki are not installable here.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import socket
import threading
from typing import Any

import orjson

from tests.conftest import free_port

POISON = b"ZZPOISONZZ"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], collector: Collector) -> None:
        self.collector = collector
        self.connections: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        self.connections.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        status, reply = self.server.collector.handle(self.path, dict(self.headers.items()), body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


class Collector:
    """Start with `Collector()`; `down()`/`up()` stop and restart it on the same port, `status`
    forces an answer (e.g. 503) for every request, `token` demands ``Authorization: Bearer``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.status: int | None = None
        self.token: str | None = None
        self.records: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._ids: set[str] = set()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.up()

    def up(self) -> None:
        if self._server is None:
            self._server = _Server(("127.0.0.1", self.port), self)
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
            self._thread.start()

    def down(self) -> None:
        """Stop listening and cut open connections: clients get refused or reset."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for sock in list(server.connections):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    close = down

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "bytes": len(body)})
            if self.status is not None:
                return self.status, b'{"error":"forced"}'
            if self.token is not None and headers.get("Authorization") != f"Bearer {self.token}":
                return 401, b'{"error":"unauthorized"}'
            if path.endswith("/_bulk"):
                return self._bulk(body)
            if path.startswith("/loki/api/v1/push"):
                return self._loki(body)
            if POISON in body:
                return 400, b'{"error":"cannot parse record"}'
            self.records.extend(orjson.loads(line) for line in body.splitlines() if line.strip())
            return 200, b"{}"

    def _bulk(self, body: bytes) -> tuple[int, bytes]:
        lines = body.splitlines()
        items = []
        for action_line, doc_line in zip(lines[0::2], lines[1::2], strict=True):
            action = orjson.loads(action_line)
            meta = action["create"]
            if POISON in doc_line:
                error = {"type": "mapper_parsing_exception", "reason": "failed to parse field"}
                items.append({"create": {"_id": meta["_id"], "status": 400, "error": error}})
            elif meta["_id"] in self._ids:
                items.append({"create": {"_id": meta["_id"], "status": 409}})
            else:
                self._ids.add(meta["_id"])
                self.records.append({"_index": meta.get("_index"), **orjson.loads(doc_line)})
                items.append({"create": {"_id": meta["_id"], "status": 201}})
        errors = any(item["create"]["status"] >= 300 for item in items)
        return 200, orjson.dumps({"took": 1, "errors": errors, "items": items})

    def _loki(self, body: bytes) -> tuple[int, bytes]:
        push = orjson.loads(body)
        if POISON in body:
            return 400, b"entry has an invalid line"
        for stream in push["streams"]:
            for stamp, text in stream["values"]:
                self.records.append({"_labels": stream["stream"], "_ts": stamp, **orjson.loads(text)})
        return 204, b""

    def paths(self) -> list[str]:
        """`url.path` of every access record received (markers left out)."""
        with self._lock:
            return [r["url"]["path"] for r in self.records if "url" in r]

    def events(self, action: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if r.get("event", {}).get("action") == action]
