"""proxylog: a mitmproxy-based front proxy for Puma with redacted ECS access records."""

__version__ = "0.1.0"
