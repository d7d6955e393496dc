"""Server-Sent Events (the WHATWG HTML "server-sent events" format), sans-I/O.

The fallback for networks that break WebSocket: a plain HTTP response that
never ends, with ``Content-Type: text/event-stream``.  Each message is one
event: ``id:`` (the message id, which the browser's ``EventSource`` sends back
as ``Last-Event-ID`` when it reconnects), an optional ``event:`` type, and the
payload as one ``data:`` line per line of text.  Comment lines (``:``) are
heartbeats that keep idle proxies from closing the stream.
"""

from __future__ import annotations

import base64
from typing import Optional, Sequence, Tuple

__all__ = ["response_head", "encode_event", "HEARTBEAT", "BINARY_EVENT"]

#: The ``event:`` type of a binary payload, whose ``data:`` is then base64.
BINARY_EVENT = "binary"

#: A comment line: ignored by clients, keeps proxies and load balancers from timing out.
HEARTBEAT = b": heartbeat\n\n"


def response_head(headers: Sequence[Tuple[str, str]] = (), retry_ms: int = 2000) -> bytes:
    """The response head of an event stream and its first field (the reconnection delay)."""
    lines = ["HTTP/1.1 200 OK", "Server: zmqws", "Content-Type: text/event-stream; charset=utf-8",
             "Cache-Control: no-cache", "X-Accel-Buffering: no", "Connection: keep-alive"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + f"\r\n\r\nretry: {retry_ms}\n\n").encode("latin-1")


def encode_event(data: bytes, msg_id: Optional[int] = None, event: Optional[str] = None,
                 binary: bool = False) -> bytes:
    """One event.  Text is split into one ``data:`` line per line (CR, LF or CRLF ends a line);
    a binary payload is sent as base64 with ``event: binary`` unless another type is given."""
    parts = []
    if msg_id is not None:
        parts.append(b"id: %d\n" % msg_id)
    if binary:
        data = base64.b64encode(data)
        event = event or BINARY_EVENT
    if event:
        parts.append(b"event: " + event.replace("\n", " ").replace("\r", " ").encode("utf-8") + b"\n")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    for line in data.split(b"\n"):
        parts.append(b"data: " + line + b"\n")
    parts.append(b"\n")
    return b"".join(parts)
