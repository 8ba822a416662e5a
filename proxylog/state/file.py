"""The live mode, bans and runtime allowlist entries, persisted across restarts as one small
JSON file in the state dir (written atomically: temp file, fsync, rename)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Any

import orjson

from proxylog.state import Ban

logger = logging.getLogger("proxylog")


class StateFile:
    """Reads and writes ``<state_dir>/state.json`` (0600)."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "state.json")

    def load(self) -> dict[str, Any]:
        """The saved state, or {} when there is none or it is unreadable (logged)."""
        try:
            with open(self.path, "rb") as f:
                data = orjson.loads(f.read())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as e:
            logger.error("ignoring unreadable state file %s: %s", self.path, e)
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def bans(saved: dict[str, Any]) -> list[Ban]:
        bans = []
        for item in saved.get("bans", []):
            try:
                bans.append(Ban(**item))
            except TypeError:
                logger.error("ignoring malformed persisted ban %r", item)
        return bans

    def save(self, mode: str | None, bans: list[Ban], allow: list[str]) -> None:
        """Replace the file atomically; raises OSError. `mode` is the operator's choice (None:
        the config's `mode:` decides at start-up)."""
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        state: dict[str, object] = {"bans": [asdict(b) for b in bans], "allow": allow}
        if mode is not None:
            state["mode"] = mode
        data = orjson.dumps(state)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
