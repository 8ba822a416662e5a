"""RFC 5424 syslog over UDP, TCP (RFC 6587 octet counting) or TLS, with reconnect and resend.

Plain TCP syslog has no acknowledgements: ``sendall`` returning means the bytes reached the
local kernel, not the receiver. When a receiver restarts, what sat in its socket buffer
(and ours) is gone although every send "succeeded". So the sink keeps the last `resend`
bytes of messages sent on a connection, checks the connection for a close before every
batch, and after any reconnect sends that window again before new messages: delivery is
at-least-once (a restart can duplicate up to `resend` bytes; each record carries its
request id and each message an RFC 5424 ``meta sequenceId`` for de-duplication). UDP is
fire-and-forget: a datagram the receiver never sees is not detected.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import errno
import os
import select
import socket
import ssl

from proxylog.config.sinks import SyslogSpec, TlsSpec
from proxylog.errors import SinkError
from proxylog.sinks.base import PartialFailure, PoisonBatch

UDP_MAX = 65_507
SEQUENCE_WRAP = 2_147_483_647


def build_tls_context(spec: TlsSpec) -> ssl.SSLContext:
    """A client context from a TlsSpec (system CAs unless `ca` is given); raises OSError or
    ssl.SSLError for unreadable files."""
    context = ssl.create_default_context(cafile=spec.ca)
    if spec.cert:
        context.load_cert_chain(spec.cert, spec.key)
    if not spec.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SyslogSink:
    """Frames records as RFC 5424 messages (the record is the MSG) and sends each batch as
    one write; blocking, used from the sink's thread."""

    def __init__(self, spec: SyslogSpec) -> None:
        self.name = spec.name
        self.spec = spec
        self.hostname = spec.hostname or (socket.gethostname() or "-")[:255]
        self._prefix = f"<{spec.facility * 8 + spec.severity}>1 ".encode()
        self._header_tail = f" {self.hostname} {spec.app_name} {os.getpid()} ".encode()
        self._sequence = 0
        self._sock: socket.socket | None = None
        self._window: collections.deque[bytes] = collections.deque()
        self._window_bytes = 0
        self._resend_pending = False
        self._tls = build_tls_context(spec.tls) if spec.tls is not None else None
        self.connects = 0
        self.resent = 0

    @classmethod
    def from_spec(cls, spec: SyslogSpec) -> SyslogSink:
        return cls(spec)

    def frame(self, line: bytes, now: float | None = None) -> bytes:
        """One RFC 5424 message for a record (msgid ``access``, a ``meta sequenceId``)."""
        self._sequence = self._sequence % SEQUENCE_WRAP + 1
        stamp = datetime.datetime.fromtimestamp(
            datetime.datetime.now(datetime.UTC).timestamp() if now is None else now, datetime.UTC
        ).isoformat(timespec="microseconds")
        header = b'%s%s%saccess [meta sequenceId="%d"] ' % (
            self._prefix,
            stamp.replace("+00:00", "Z").encode(),
            self._header_tail,
            self._sequence,
        )
        return header + line.rstrip(b"\n")

    def write(self, lines: list[bytes]) -> None:
        messages = [self.frame(line) for line in lines]
        if self.spec.transport == "udp":
            self._send_datagrams(lines, messages)
        else:
            self._send_stream(messages)

    def _send_datagrams(self, lines: list[bytes], messages: list[bytes]) -> None:
        too_big = [
            (line, f"{len(m)} bytes is over the UDP limit")
            for line, m in zip(lines, messages, strict=False)
            if len(m) > UDP_MAX
        ]
        sock = self._connect()
        for index, message in enumerate(messages):
            if len(message) > UDP_MAX:
                continue
            try:
                sock.send(message)
            except OSError as e:
                self._disconnect()
                # ECONNREFUSED reports an earlier datagram the receiver's host refused
                raise PartialFailure(f"syslog UDP send failed: {e.strerror or e}", lines[index:]) from e
        if too_big:
            raise PoisonBatch("records too large for UDP syslog", too_big)

    def _send_stream(self, messages: list[bytes]) -> None:
        frames = [b"%d %s" % (len(m), m) for m in messages]
        sock = self._connection()
        try:
            if self._resend_pending:
                if self._window:
                    sock.sendall(b"".join(self._window))
                    self.resent += len(self._window)
                self._resend_pending = False
            sock.sendall(b"".join(frames))
        except (OSError, ssl.SSLError) as e:
            self._disconnect()
            raise SinkError(f"syslog {self._address()} send failed: {_reason(e)}") from e
        for frame in frames:
            self._remember(frame)

    def _remember(self, frame: bytes) -> None:
        limit = self.spec.resend
        if limit <= 0:
            return
        self._window.append(frame)
        self._window_bytes += len(frame)
        while self._window_bytes > limit and len(self._window) > 1:
            self._window_bytes -= len(self._window.popleft())

    def _connection(self) -> socket.socket:
        """The live stream connection, reconnecting (and arming a resend) when the peer
        closed or reset it since the last batch."""
        if self._sock is not None and not self._alive(self._sock):
            self._disconnect()
        if self._sock is None:
            self._connect()
            self._resend_pending = True
        assert self._sock is not None
        return self._sock

    def _alive(self, sock: socket.socket) -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        if not readable:
            return True
        try:  # a syslog receiver never talks: readable means closed or reset
            if isinstance(sock, ssl.SSLSocket):
                sock.setblocking(False)
                try:
                    return bool(sock.recv(4096))
                finally:
                    sock.setblocking(True)
            return bool(sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except (OSError, ssl.SSLError):
            return False

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        spec = self.spec
        kind = socket.SOCK_DGRAM if spec.transport == "udp" else socket.SOCK_STREAM
        try:
            infos = socket.getaddrinfo(spec.host, spec.port, type=kind)
            family, socktype, proto, _, address = infos[0]
            sock = socket.socket(family, socktype, proto)
        except OSError as e:
            raise SinkError(f"syslog {self._address()}: {_reason(e)}") from e
        try:
            sock.settimeout(spec.timeout)
            sock.connect(address)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(
                    sock, server_hostname=(spec.tls and spec.tls.server_name) or spec.host
                )
        except (OSError, ssl.SSLError) as e:
            sock.close()
            raise SinkError(f"syslog {self._address()} connect failed: {_reason(e)}") from e
        self._sock = sock
        self.connects += 1
        return sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            with contextlib.suppress(OSError):
                sock.close()

    def _address(self) -> str:
        return f"{self.spec.transport}://{self.spec.host}:{self.spec.port}"

    def close(self) -> None:
        sock = self._sock
        if sock is not None and isinstance(sock, ssl.SSLSocket):
            with contextlib.suppress(OSError, ssl.SSLError, ValueError):
                sock.unwrap()
        self._disconnect()


def _reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    if isinstance(error, OSError) and error.errno in (errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE):
        return error.strerror or str(error)
    return str(error) or type(error).__name__
