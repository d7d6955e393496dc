"""Reference Socket.IO gateway for the Socket.IO fan-out benchmark: python-socketio.

Written the way python-socketio's documentation sets up an asyncio server:
``socketio.AsyncServer(async_mode="aiohttp")`` attached to an ``aiohttp.web``
application (served by aiohttp's ``AppRunner``/``TCPSite``, what ``web.run_app``
does); one task awaits each ZeroMQ message (``zmq.asyncio`` SUB, subscribed to
everything) and calls ``await sio.emit("message", data)``, which sends the event
to every connected client of the main namespace.  Text payloads go out as strings.  Heartbeats are
python-socketio's defaults (ping every 25 s; the load client answers).

    pip install -e '.[bench]'       # python-socketio, aiohttp
    python benchmarks/ref_socketio.py --sub tcp://127.0.0.1:5556 --port 8765
"""

from __future__ import annotations

import asyncio
import signal

import socketio
import zmq
import zmq.asyncio
from aiohttp import web

from refcommon import reference_options, subscriber


async def forward(sio: socketio.AsyncServer, sub: zmq.asyncio.Socket) -> None:
    while True:
        parts = await sub.recv_multipart()
        data = parts[-1]
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            value = data  # bytes: a binary attachment, as zmqws does
        await sio.emit("message", value)


async def main() -> None:
    p = reference_options("python-socketio (aiohttp) + zmq.asyncio fan-out gateway")
    args = p.parse_args()

    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", logger=False,
                               engineio_logger=False)
    app = web.Application()
    sio.attach(app)

    ctx, sub = subscriber(args)

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=4096)
    await site.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(forward(sio, sub))
    await stop.wait()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await runner.cleanup()
    sub.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    asyncio.run(main())
