"""The sans-I/O protocol room: bytes in, events and bytes out; no sockets, clocks or threads.

* :mod:`.frames`: RFC 6455 §5 framing and close codes.
* :mod:`.handshake`: the RFC 6455 §4 opening handshake and HTTP/1.1 requests (RFC 9112) with limits.
* :mod:`.connection`: one WebSocket connection's state machine (§5-§7) and its output queue.
* :mod:`.deflate`: permessage-deflate (RFC 7692).
* :mod:`.utf8`: incremental, fail-fast UTF-8 validation (§8.1).
* :mod:`.sse`: the Server-Sent Events stream format (HTML Living Standard §9.2).
* :mod:`.engineio`: Engine.IO v4 and Socket.IO v5 packets.
"""
