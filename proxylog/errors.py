"""The small exception hierarchy every proxylog module raises; boundaries translate into it."""

from __future__ import annotations


class ProxylogError(Exception):
    """Base class for every error proxylog raises on purpose."""


class ConfigError(ProxylogError):
    """A configuration value is invalid; `path` names the key, e.g. ``rules[2].window``."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class SinkError(ProxylogError):
    """A sink could not deliver a batch; the worker decides whether to retry."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        self.retryable = retryable
        super().__init__(message)


class ControlError(ProxylogError):
    """A control-socket command failed; the message is sent back to the caller."""
