"""TLS for ``wss://`` and ``https://``: a server context with modern defaults (stdlib ``ssl``)."""

from __future__ import annotations

import ssl
from typing import Optional

__all__ = ["server_context"]


def server_context(certfile: str, keyfile: Optional[str] = None, password: Optional[str] = None
                   ) -> ssl.SSLContext:
    """An SSL context for the server side: TLS 1.2 or newer, the certificate chain loaded.

    Pass it as ``ssl_context=`` to :class:`~zmqws.server.WebSocketServer` or
    :class:`~zmqws.gateway.Gateway`.  The handshake then runs non-blocking
    inside the loop, bounded by ``handshake_timeout``.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.load_cert_chain(certfile, keyfile, password)
    return context
