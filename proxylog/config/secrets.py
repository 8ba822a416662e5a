"""Secrets (tokens, keys) come from a file or the environment, never from the YAML itself."""

from __future__ import annotations

import os

from proxylog.errors import ConfigError


def read_secret(path: str | None, env: str | None, where: str) -> str:
    """The secret in file `path` (stripped) or environment variable `env`; raises ConfigError
    naming `where` (a config key path) when neither yields a non-empty value."""
    if path:
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as e:
            raise ConfigError(where, f"cannot read secret file {path}: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(where, f"secret file {path} is not UTF-8 text") from e
        if not value:
            raise ConfigError(where, f"secret file {path} is empty")
        return value
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(where, f"environment variable {env} is not set or empty")
        return value
    raise ConfigError(where, "needs a token_file or token_env")
