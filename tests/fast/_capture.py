"""A raw-capturing TCP relay for tests: it accepts on a free loopback port, forwards every
connection to a target (Puma) and back, and records every byte the target was sent, per
connection, so a test can assert exactly what Puma received."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class CaptureRelay:
    """Started on construction (threads, test-only); `close` stops it and its connections."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._received: list[bytearray] = []
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._spawn(self._accept)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            record = bytearray()
            with self._lock:
                self._received.append(record)
                self._sockets += (client, upstream)
            self._spawn(self._pipe, client, upstream, record)
            self._spawn(self._pipe, upstream, client, None)

    def _pipe(self, source: socket.socket, sink: socket.socket, record: bytearray | None) -> None:
        try:
            while data := source.recv(65536):
                if record is not None:
                    with self._lock:
                        record += data
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def connections(self) -> list[bytes]:
        """What the target received on each connection so far, in accept order."""
        with self._lock:
            return [bytes(r) for r in self._received]

    def received(self) -> bytes:
        return b"".join(self.connections())

    def wait_for(self, data: bytes, timeout: float = 10.0) -> bytes:
        """Everything received once it contains `data`; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while data not in (got := self.received()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the target never received {data!r}; got {got!r}")
            time.sleep(0.01)
        return got

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(5)
