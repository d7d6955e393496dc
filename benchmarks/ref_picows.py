"""Reference gateway for the fan-out benchmark (stack ``picows``): picows + ``zmq.asyncio``.

picows is an asyncio WebSocket library written in Cython for speed.  Its
server calls a listener object per connection; the gateway keeps the open
transports in a set, and one task awaits each ZeroMQ message and sends it to
every transport with ``transport.send(WSMsgType.BINARY, payload)``, which
frames and writes at once (there is no broadcast helper).  picows answers
pings by itself (``enable_auto_pong``, its default) and has no compression.
After each message the task yields to the event loop (``asyncio.sleep(0)``),
as the websockets reference does, so that a backlog of ZeroMQ messages does
not starve the transports.

    python benchmarks/ref_picows.py --sub tcp://127.0.0.1:5556 --port 8765
"""

from __future__ import annotations

import asyncio
import signal

import zmq
import zmq.asyncio
from picows import WSListener, WSMsgType, WSTransport, ws_create_server

from refcommon import reference_options, subscriber

TRANSPORTS: set = set()


class Listener(WSListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        TRANSPORTS.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        TRANSPORTS.discard(transport)


async def forward(sub: zmq.asyncio.Socket) -> None:
    while True:
        parts = await sub.recv_multipart()
        payload = parts[-1]
        for transport in TRANSPORTS:
            transport.send(WSMsgType.BINARY, payload)
        await asyncio.sleep(0)  # see the module docstring


async def main() -> None:
    p = reference_options("picows + zmq.asyncio fan-out gateway")
    args = p.parse_args()

    ctx, sub = subscriber(args)

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    server = await ws_create_server(lambda _request: Listener(), args.host, args.port, backlog=1024)
    task = asyncio.create_task(forward(sub))
    await stop
    task.cancel()
    server.close()
    for transport in list(TRANSPORTS):
        transport.disconnect()
    sub.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    asyncio.run(main())
