"""A layer that refuses TLS on a plain-HTTP listener instead of answering with a forged cert."""

from __future__ import annotations

import logging

from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.mode_specs import ReverseMode

logger = logging.getLogger("proxylog")

# TLS record: alert, TLS 1.0 framing, length 2, fatal (2), handshake_failure (40).
HANDSHAKE_FAILURE_ALERT = b"\x15\x03\x01\x00\x02\x02\x28"


class RefuseTLS(layer.Layer):
    """Sends a fatal handshake_failure alert and closes the client connection."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start | events.DataReceived):
            yield commands.SendData(self.context.client, HANDSHAKE_FAILURE_ALERT)
            yield commands.CloseConnection(self.context.client)


def refuse_tls_on_plain_listener(nextlayer: layer.NextLayer) -> bool:
    """In a plain-HTTP reverse listener, replace the TLS layer mitmproxy picked for a
    ClientHello with RefuseTLS. Returns True when it did."""
    mode = nextlayer.context.client.proxy_mode
    if not isinstance(mode, ReverseMode) or mode.scheme != "http":
        return False
    if nextlayer.context.client.tls_established or not starts_like_tls_record(nextlayer.data_client()):
        return False
    nextlayer.layer = RefuseTLS(nextlayer.context)
    return True
