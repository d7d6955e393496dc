"""Reference gateway for the fan-out benchmark: Tornado ``WebSocketHandler`` + ``zmq.asyncio``.

Tornado 6 runs on asyncio, so the SUB socket is a ``zmq.asyncio`` socket
awaited on Tornado's own loop (``zmq.eventloop.zmqstream.ZMQStream`` would do
the same through callbacks).  Each message goes to every open handler with
``write_message(payload, binary=True)``.  No compression
(``get_compression_options`` returns None, which is also Tornado's default),
no keepalive pings (Tornado's default).

    python benchmarks/ref_tornado.py --sub tcp://127.0.0.1:5556 --port 8888
"""

from __future__ import annotations

import asyncio
import signal

import tornado.web
import tornado.websocket
import zmq
import zmq.asyncio

from refcommon import reference_options, subscriber

CLIENTS: set["Handler"] = set()


class Handler(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def get_compression_options(self):
        return None

    def open(self) -> None:
        CLIENTS.add(self)

    def on_message(self, message) -> None:
        pass

    def on_close(self) -> None:
        CLIENTS.discard(self)


async def forward(sub: zmq.asyncio.Socket) -> None:
    closed = tornado.websocket.WebSocketClosedError
    while True:
        parts = await sub.recv_multipart()
        payload = parts[-1]
        for client in list(CLIENTS):
            try:
                client.write_message(payload, binary=True)
            except closed:
                CLIENTS.discard(client)
        # Yield to the loop between messages: awaiting recv_multipart() does not when a
        # message is already queued, and a backlog would otherwise starve the loop
        # (no IOStream flushed, no client read).  Same as in ref_websockets.py.
        await asyncio.sleep(0)


async def main() -> None:
    p = reference_options("Tornado + zmq.asyncio fan-out gateway")
    args = p.parse_args()

    ctx, sub = subscriber(args)

    app = tornado.web.Application([(r"/", Handler)])
    server = app.listen(args.port, address=args.host, backlog=1024)
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    task = asyncio.create_task(forward(sub))
    await stop
    task.cancel()
    server.stop()
    sub.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    asyncio.run(main())
