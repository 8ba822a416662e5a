"""The fast data plane: an HTTP/1.1 reverse proxy on asyncio protocols and httptools, in
front of Puma, that hands every request to a pipeline `Handler` (see `contract`)."""

from __future__ import annotations

from proxylog.fast.contract import ErrorType, Exchange, Handler, RequestHead
from proxylog.fast.options import FastOptions
from proxylog.fast.server import FastServer

__all__ = ["ErrorType", "Exchange", "FastOptions", "FastServer", "Handler", "RequestHead"]
