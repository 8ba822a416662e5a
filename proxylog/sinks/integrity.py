"""HMAC-chained records for file sinks, and `verify` to check a chain (`proxylog verify`).

Every line a chained file sink writes gets a suffix before its closing brace::

    {...,"proxylog.integrity.seq":42,"proxylog.integrity.prev":"<mac of seq 41>",
         "proxylog.integrity.mac":"<mac of this line>"}      (one line)

dotted keys, so the suffix is the same on nested and flat records and lands under
`proxylog.integrity.*` either way (Elasticsearch and OpenSearch expand dotted names).

where ``mac`` is HMAC-SHA256 (truncated to 128 bits) over the sequence number, ``prev`` and
the record as it was before the suffix. A line therefore authenticates itself (an edit
breaks its own mac) and names its predecessor (a deletion or a reorder breaks the link).
Each file opens with an ``integrity_chain_start`` record and is closed (on rotation, reopen
or shutdown) with an ``integrity_chain_end`` seal, so a cut-off tail is a truncation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxylog.config.secrets import read_key as read_secret_key
from proxylog.record import Schema, encode_document, event_document

DOMAIN = b"proxylog-chain-v1\x00"
MAC_BYTES = 16
ZERO = "0" * (2 * MAC_BYTES)
START = "integrity_chain_start"
END = "integrity_chain_end"
MIN_KEY_BYTES = 16
_SUFFIX = re.compile(
    rb',?"proxylog\.integrity\.seq":(\d{1,19}),"proxylog\.integrity\.prev":"([0-9a-f]{32})",'
    rb'"proxylog\.integrity\.mac":"([0-9a-f]{32})"\}\n?\Z'
)
# The suffix of proxylog.schema_version 1 (a top-level `integrity` object): still verified.
_LEGACY_SUFFIX = re.compile(
    rb',?"integrity":\{"seq":(\d{1,19}),"prev":"([0-9a-f]{32})","mac":"([0-9a-f]{32})"\}\}\n?\Z'
)

def read_key(path: str, where: str = "integrity.key_file") -> bytes:
    """The chain's HMAC key in `path` (whitespace stripped); raises ConfigError."""
    return read_secret_key(path, where, MIN_KEY_BYTES)


def key_id(key: bytes) -> str:
    """A short public fingerprint of a key, so a reader knows which key a chain needs."""
    return hashlib.sha256(b"proxylog-key-id\x00" + key).hexdigest()[:12]


def compute_mac(key: bytes, seq: int, prev: str, record: bytes) -> str:
    """The mac of one record (without its integrity suffix) at position `seq` after `prev`."""
    message = DOMAIN + seq.to_bytes(8, "big") + bytes.fromhex(prev) + record
    return hmac.new(key, message, hashlib.sha256).digest()[:MAC_BYTES].hex()


_TAIL = b'"proxylog.integrity.seq":%d,"proxylog.integrity.prev":"%s","proxylog.integrity.mac":"%s"}\n'


def _attach(record: bytes, seq: int, prev: str, mac: str) -> bytes:
    body = record[:-1]  # drop the closing brace
    comma = b"" if body.rstrip() == b"{" else b","
    return body + comma + _TAIL % (seq, prev.encode(), mac.encode())


@dataclass(slots=True)
class ChainState:
    """Where a chain stands: the last sequence number written and its mac."""

    seq: int = 0
    mac: str = ZERO


class Chain:
    """Links lines into the chain for one file sink. `link` is pure (returns the bytes and
    the state after them); the sink calls `commit` only once the bytes are on disk."""

    def __init__(self, key: bytes, sink: str, schema: Schema = "nested") -> None:
        self.key = key
        self.sink = sink
        self.schema: Schema = schema
        self.key_id = key_id(key)
        self.state = ChainState()

    def link(self, lines: list[bytes], state: ChainState | None = None) -> tuple[bytes, ChainState]:
        """The lines with their integrity suffixes, and the chain state after them."""
        seq, prev = (state or self.state).seq, (state or self.state).mac
        out = []
        for line in lines:
            record = line.rstrip(b"\n")
            if not record.endswith(b"}"):  # never expected: every line is a JSON object
                record = orjson.dumps({"unparsed": record.decode("utf-8", "replace")})
            seq += 1
            mac = compute_mac(self.key, seq, prev, record)
            out.append(_attach(record, seq, prev, mac))
            prev = mac
        return b"".join(out), ChainState(seq, prev)

    def commit(self, state: ChainState) -> None:
        self.state = state

    def boundary(self, action: str, **fields: Any) -> bytes:
        """A chain start or end record for this sink (to be passed through `link`)."""
        doc = event_document(action, "process", sink=self.sink, integrity={"key_id": self.key_id, **fields})
        return encode_document(doc, self.schema)

    def resume(self, path: str) -> int:
        """Continue the chain from the last line of an existing file at `path`; returns the
        number of bytes of a torn last line that must be cut (0 when the file ends cleanly)."""
        tail, torn = _last_line(path)
        parsed = parse_line(tail) if tail else None
        if parsed is not None and compute_mac(self.key, parsed.seq, parsed.prev, parsed.record) == parsed.mac:
            self.state = ChainState(parsed.seq, parsed.mac)
        return torn


def _last_line(path: str) -> tuple[bytes, int]:
    """The last complete line of a file and the length of any torn bytes after it."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            chunk = min(size, 1024 * 1024)
            f.seek(size - chunk)
            data = f.read(chunk)
    except OSError:
        return b"", 0
    cut = data.rfind(b"\n") + 1
    torn = len(data) - cut
    lines = data[:cut].splitlines()
    return (lines[-1] if lines else b""), torn


@dataclass(slots=True, frozen=True)
class ParsedLine:
    """One chained line split into its record and integrity fields."""

    record: bytes
    seq: int
    prev: str
    mac: str

    def action(self) -> str | None:
        try:
            doc = orjson.loads(self.record)
        except orjson.JSONDecodeError:
            return None
        event = doc.get("event") if isinstance(doc, dict) else None
        action = event.get("action") if isinstance(event, dict) else doc.get("event.action")
        return action if isinstance(action, str) else None


def parse_line(line: bytes) -> ParsedLine | None:
    """Split a chained line, or None when it does not end in an integrity suffix."""
    match = _SUFFIX.search(line) or _LEGACY_SUFFIX.search(line)
    if match is None:
        return None
    record = line[: match.start()] + b"}"
    return ParsedLine(record, int(match.group(1)), match.group(2).decode(), match.group(3).decode())


@dataclass(slots=True)
class Finding:
    """The verdict on a chain: `kind` is None when intact, else edit, deletion, reorder or
    truncation, with the first bad sequence number and where it was found."""

    kind: str | None
    seq: int | None
    file: str
    line: int
    message: str
    records: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.kind is None,
            "kind": self.kind,
            "seq": self.seq,
            "file": self.file,
            "line": self.line,
            "records": self.records,
            "message": self.message,
        }


@dataclass(slots=True)
class _Line:
    file: str
    number: int
    raw: bytes
    parsed: ParsedLine | None
    last_in_file: bool
    newline: bool


def _lines(paths: Sequence[str]) -> Iterator[_Line]:
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        raw_lines = data.split(b"\n")
        ends_clean = raw_lines[-1] == b""
        if ends_clean:
            raw_lines.pop()
        for index, raw in enumerate(raw_lines):
            last = index == len(raw_lines) - 1
            yield _Line(path, index + 1, raw, parse_line(raw), last, not last or ends_clean)


def verify(paths: Sequence[str], key: bytes | None, *, allow_open: bool = False) -> Finding:
    """Check the chain across `paths` (in order); the first problem found, or an intact verdict.
    Without a key only the structure is checked (links, order, seals), not the contents."""
    lines = list(_lines(paths))
    last_index: dict[int, int] = {}  # seq -> the last line index it occurs at
    for index, line in enumerate(lines):
        if line.parsed is not None:
            last_index[line.parsed.seq] = index

    def appears_later(index: int, low: int, high: int) -> bool:
        return any(last_index.get(seq, -1) > index for seq in range(low, min(high, low + 100_000)))

    expected: int | None = None
    prev_mac: str | None = None
    count = 0
    for index, line in enumerate(lines):
        where = (line.file, line.number)
        parsed = line.parsed
        if parsed is None:
            tail_cut = line.last_in_file and not line.newline and line is lines[-1]
            if tail_cut and not _has_complete_suffix(line.raw):
                return Finding("truncation", expected, *where, "the last line is cut off", count)
            return Finding("edit", expected, *where, "the line's integrity suffix is damaged", count)
        if key is not None and compute_mac(key, parsed.seq, parsed.prev, parsed.record) != parsed.mac:
            return Finding("edit", expected or parsed.seq, *where, "the line's mac does not match", count)
        action = parsed.action()
        if expected is None:
            if action != START:
                if appears_later(index, max(parsed.seq - 100_000, 0), parsed.seq):
                    return Finding("reorder", None, *where, "the chain start is out of place", count)
                return Finding(
                    "deletion",
                    parsed.seq - 1,
                    *where,
                    f"records up to seq {parsed.seq - 1} are missing (no chain start at the top)",
                    count,
                )
        elif parsed.seq != expected or parsed.prev != prev_mac:
            if parsed.prev == ZERO and action == START and parsed.seq == 1:
                pass  # a new chain (the key or the file changed); the old part was intact
            elif parsed.seq > expected:
                if appears_later(index, expected, parsed.seq):
                    return Finding(
                        "reorder", expected, *where, f"seq {parsed.seq} where {expected} belongs", count
                    )
                return Finding(
                    "deletion", expected, *where, f"seq {expected}..{parsed.seq - 1} are missing", count
                )
            elif parsed.seq < expected:
                return Finding(
                    "reorder", expected, *where, f"seq {parsed.seq} again where {expected} belongs", count
                )
            else:
                return Finding(
                    "reorder", expected, *where, f"seq {expected} does not follow its predecessor", count
                )
        if line.last_in_file and action != END and not (allow_open and line is lines[-1]):
            kind = "truncation"
            return Finding(kind, parsed.seq + 1, *where, "the file ends without its chain seal", count + 1)
        if not line.newline and not allow_open:
            return Finding("truncation", parsed.seq + 1, *where, "the last line lacks its newline", count + 1)
        expected, prev_mac = parsed.seq + 1, parsed.mac
        count += 1
    if not lines:
        return Finding("truncation", None, paths[-1] if paths else "", 0, "no records", 0)
    note = "intact" + ("" if key is not None else " (structure only: no key, contents not authenticated)")
    return Finding(None, None, lines[-1].file, lines[-1].number, note, count)


def _has_complete_suffix(raw: bytes) -> bool:
    return re.search(rb'"(?:proxylog\.integrity\.)?mac":"[0-9a-f]{32}"\}', raw) is not None
