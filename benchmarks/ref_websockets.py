"""Reference gateway for the fan-out benchmark: ``websockets`` (asyncio) + ``zmq.asyncio``.

Written the way the websockets documentation recommends for fan-out
("If you want to send a message to all connected clients, use
broadcast()", topics/broadcast): a handler that keeps the set of open
connections, and one task that awaits each ZeroMQ message and hands it to
``websockets.asyncio.server.broadcast()``, which writes the frame to every
open connection without waiting.  No compression (``compression=None``),
or with ``--deflate`` websockets' own permessage-deflate (``compression="deflate"``:
its defaults, which compress per connection with context takeover, a 12-bit
window and memLevel 5); other settings are websockets' defaults (keepalive pings every 20 s; the
load client answers them).

    python benchmarks/ref_websockets.py --sub tcp://127.0.0.1:5556 --port 8765
"""

from __future__ import annotations

import asyncio
import signal

import zmq
import zmq.asyncio
from websockets.asyncio.server import ServerConnection, broadcast, serve

from refcommon import reference_options, subscriber

CONNECTIONS: set[ServerConnection] = set()


async def handler(websocket: ServerConnection) -> None:
    CONNECTIONS.add(websocket)
    try:
        await websocket.wait_closed()
    finally:
        CONNECTIONS.discard(websocket)


async def forward(sub: zmq.asyncio.Socket) -> None:
    while True:
        parts = await sub.recv_multipart()
        broadcast(CONNECTIONS, parts[-1])  # bytes -> binary frame
        # The docs: the broadcasting coroutine "must yield control to the event loop
        # between each message".  Awaiting recv_multipart() does not when a message is
        # already queued (the future is resolved at once): without this, a backlog
        # starves the loop, no transport buffer is flushed and no client is read.
        await asyncio.sleep(0)


async def main() -> None:
    p = reference_options("websockets + zmq.asyncio fan-out gateway")
    p.add_argument("--deflate", action="store_true", help='compression="deflate"')
    args = p.parse_args()

    ctx, sub = subscriber(args)

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, args.host, args.port, compression="deflate" if args.deflate else None,
                     backlog=1024):
        task = asyncio.create_task(forward(sub))
        await stop
        task.cancel()
    sub.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    asyncio.run(main())
