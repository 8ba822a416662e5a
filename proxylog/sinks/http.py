"""Batches POSTed to a log collector: NDJSON, Elasticsearch/OpenSearch ``_bulk`` or Loki push.

One persistent HTTP/1.1 connection (http.client) on the sink's thread; bodies gzipped.
Answers decide what happens to a batch:

- 2xx: delivered (for ``_bulk``, item by item: 409 means already stored by an earlier try);
- 408, 425, 429, 5xx, a dropped connection, and 401/403/404/407 (the collector or our
  credentials are wrong, not the batch): retried, with the worker spooling meanwhile;
- any other 4xx (400, 413, 422, …): the batch is poison. It is split in halves to find the
  lines the collector refuses; those are quarantined and counted, the rest delivered.
"""

from __future__ import annotations

import base64
import collections
import datetime
import gzip
import hashlib
import http.client
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

import orjson

from proxylog import __version__
from proxylog.config.reader import display_url
from proxylog.config.secrets import read_secret
from proxylog.config.sinks import HttpSpec
from proxylog.errors import SinkError
from proxylog.sinks.base import PartialFailure, PoisonBatch
from proxylog.sinks.syslog import build_tls_context

RETRY_STATUSES = frozenset({401, 403, 404, 407, 408, 425, 429})
POISON_BUDGET = 32  # requests one batch may spend isolating poison lines
GZIP_LEVEL = 1


class _Refused(Exception):
    """The collector refused a whole request for its content (a 4xx that is not retryable)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HttpSink:
    """POSTs batches in the configured format; blocking, used from the sink's thread."""

    def __init__(self, spec: HttpSpec) -> None:
        self.name = spec.name
        self.spec = spec
        parts = urlsplit(spec.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._where = display_url(spec.url)  # errors never show ?api_key=…
        self._tls = None
        if self._https:
            self._tls = build_tls_context(spec.tls) if spec.tls else ssl.create_default_context()
        self._conn: http.client.HTTPConnection | None = None
        self._auth: str | None = None
        self._load_token()
        self.requests = 0

    @classmethod
    def from_spec(cls, spec: HttpSpec) -> HttpSink:
        return cls(spec)

    def _load_token(self) -> None:
        """Read the token from its file or variable (again on reopen: rotated credentials)."""
        spec = self.spec
        if not (spec.token_file or spec.token_env):
            self._auth = None
            return
        token = read_secret(spec.token_file, spec.token_env, f"sinks[{spec.name}]")
        if spec.auth_scheme and spec.auth_scheme.lower() == "basic" and ":" in token:
            token = base64.b64encode(token.encode()).decode()
        self._auth = f"{spec.auth_scheme} {token}" if spec.auth_scheme else token

    def reopen(self) -> None:
        """Re-read the token and start a fresh connection (SIGHUP)."""
        self._load_token()
        self._disconnect()

    # -- batches ----------------------------------------------------------------------------

    def write(self, lines: list[bytes]) -> None:
        """Deliver a batch; raises SinkError (retry), PartialFailure (retry the rest) or
        PoisonBatch (the refused lines, everything else delivered)."""
        outcome: list[bool | str | None] = [None] * len(lines)  # True ok, str refused, False retry
        parts: collections.deque[list[int]] = collections.deque([list(range(len(lines)))])
        budget = POISON_BUDGET
        while parts:
            part = parts.popleft()
            try:
                items = self._post([lines[i] for i in part])
            except _Refused as e:
                budget -= 1
                if len(part) > 1 and budget > 0:
                    half = len(part) // 2
                    parts.extendleft([part[half:], part[:half]])
                    continue
                for i in part:
                    outcome[i] = e.reason
                continue
            except SinkError as e:
                if any(o is True for o in outcome):
                    raise PartialFailure(
                        str(e), [lines[i] for i, o in enumerate(outcome) if o is not True]
                    ) from e
                raise
            for i, result in zip(part, items, strict=True):
                outcome[i] = result
        if any(o is False for o in outcome):
            retry = sum(1 for o in outcome if o is False)
            raise PartialFailure(
                f"the collector asked to retry {retry} of {len(lines)} records",
                [lines[i] for i, o in enumerate(outcome) if o is not True],
            )
        rejected = [(lines[i], o) for i, o in enumerate(outcome) if isinstance(o, str)]
        if rejected:
            raise PoisonBatch(f"the collector refused {len(rejected)} records: {rejected[0][1]}", rejected)

    def _post(self, lines: list[bytes]) -> list[bool | str]:
        """POST one request; per line: True delivered, False retry, or the refusal reason."""
        body, content_type = self.encode(lines)
        headers = {
            "Content-Type": content_type,
            "User-Agent": f"proxylog/{__version__}",
            **dict(self.spec.headers),
        }
        if self.spec.gzip:
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        if self._auth:
            headers[self.spec.auth_header] = self._auth
        status, reply = self._request(body, headers)
        if 200 <= status < 300:
            if self.spec.format == "elasticsearch":
                return _bulk_items(reply, len(lines))
            return [True] * len(lines)
        detail = reply[:200].decode("utf-8", "replace").strip()
        if status in RETRY_STATUSES or status >= 500 or status < 200:
            raise SinkError(f"{self._where} answered {status}: {detail}")
        raise _Refused(f"HTTP {status}: {detail}")

    def _request(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in (1, 2):
            conn = self._connection()
            fresh = conn.sock is None
            try:
                conn.request("POST", self._target, body=body, headers=headers)
                response = conn.getresponse()
                reply = response.read()
            except (OSError, http.client.HTTPException, ssl.SSLError) as e:
                self._disconnect()
                # a kept-alive connection the server closed meanwhile: one immediate retry
                if (
                    attempt == 1
                    and not fresh
                    and isinstance(e, http.client.RemoteDisconnected | BrokenPipeError)
                ):
                    continue
                raise SinkError(f"{self._where} unreachable: {_reason(e)}") from e
            self.requests += 1
            if response.will_close:
                self._disconnect()
            return response.status, reply
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.spec.timeout, context=self._tls
                )
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.spec.timeout)
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def close(self) -> None:
        self._disconnect()

    # -- formats ----------------------------------------------------------------------------

    def encode(self, lines: list[bytes]) -> tuple[bytes, str]:
        """The request body and content type for a batch in the configured format."""
        if self.spec.format == "elasticsearch":
            return self._bulk(lines), "application/x-ndjson"
        if self.spec.format == "loki":
            return self._loki(lines), "application/json"
        return b"".join(
            line if line.endswith(b"\n") else line + b"\n" for line in lines
        ), "application/x-ndjson"

    def _bulk(self, lines: list[bytes]) -> bytes:
        """``create`` actions with an id derived from the line: a resent batch is answered 409
        for what is already stored instead of storing it twice."""
        out = []
        for line in lines:
            meta: dict[str, Any] = {"_id": hashlib.blake2b(line.rstrip(b"\n"), digest_size=16).hexdigest()}
            if self.spec.index:
                meta["_index"] = self.spec.index
            out.append(orjson.dumps({"create": meta}) + b"\n")
            out.append(line if line.endswith(b"\n") else line + b"\n")
        return b"".join(out)

    def _loki(self, lines: list[bytes]) -> bytes:
        values = [[str(_timestamp_ns(line)), line.rstrip(b"\n").decode("utf-8", "replace")] for line in lines]
        return orjson.dumps({"streams": [{"stream": dict(self.spec.labels), "values": values}]})


def _timestamp_ns(line: bytes) -> int:
    """The record's ``@timestamp`` in nanoseconds (now, if it has none)."""
    try:
        stamp = orjson.loads(line).get("@timestamp")
        moment = datetime.datetime.fromisoformat(stamp)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        moment = datetime.datetime.now(datetime.UTC)
    seconds = int(moment.replace(microsecond=0).timestamp())
    return seconds * 1_000_000_000 + moment.microsecond * 1000


def _bulk_items(reply: bytes, count: int) -> list[bool | str]:
    """Per-item outcomes of a ``_bulk`` answer (409: already stored, so delivered)."""
    try:
        data = orjson.loads(reply)
    except orjson.JSONDecodeError as e:
        raise SinkError(f"unreadable _bulk answer: {reply[:100]!r}") from e
    if not data.get("errors"):
        return [True] * count
    items = data.get("items") or []
    if len(items) != count:
        raise SinkError(f"_bulk answered {len(items)} items for {count} records")
    results: list[bool | str] = []
    for item in items:
        op = next(iter(item.values())) if isinstance(item, dict) and item else {}
        status = op.get("status", 0)
        if 200 <= status < 300 or status == 409:
            results.append(True)
        elif status == 429 or status >= 500:
            results.append(False)
        else:
            error = op.get("error") or {}
            reason = error.get("reason") if isinstance(error, dict) else str(error)
            kind = error.get("type") if isinstance(error, dict) else None
            results.append(f"_bulk item {status} {kind}: {reason}")
    return results


def _reason(error: BaseException) -> str:
    if isinstance(error, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
