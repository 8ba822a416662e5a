"""Secrets (tokens, passwords, keys) come from a file or the environment, never from the YAML
itself: the one place they are read, with errors naming the config key."""

from __future__ import annotations

import os

from proxylog.errors import ConfigError


def read_secret(
    path: str | None,
    env: str | None,
    where: str,
    *,
    file_key: str = "token_file",
    env_key: str = "token_env",
) -> str:
    """The secret in file `path` (stripped) or environment variable `env`; raises ConfigError
    naming ``<where>.<file_key>`` or ``<where>.<env_key>`` (just the key when `where` is
    empty: a command-line flag) when neither yields a value."""
    prefix = f"{where}." if where else ""
    if path:
        key = prefix + file_key
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as e:
            raise ConfigError(key, f"cannot read secret file {path}: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(key, f"secret file {path} is not UTF-8 text") from e
        if not value:
            raise ConfigError(key, f"secret file {path} is empty")
        return value
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(prefix + env_key, f"environment variable {env} is not set or empty")
        return value
    raise ConfigError(where or file_key, f"needs a {file_key} or {env_key}")


def read_key(path: str, where: str, min_bytes: int) -> bytes:
    """A binary key in file `path` (surrounding whitespace stripped), at least `min_bytes`
    long; raises ConfigError naming `where`."""
    try:
        with open(os.path.expanduser(path), "rb") as f:
            key = f.read().strip()
    except OSError as e:
        raise ConfigError(where, f"cannot read key file {path}: {e.strerror or e}") from e
    if len(key) < min_bytes:
        raise ConfigError(where, f"key file {path} holds {len(key)} bytes; at least {min_bytes} needed")
    return key
