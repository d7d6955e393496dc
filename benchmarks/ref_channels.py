"""Reference gateway for the topics benchmark: picows + ``zmq.asyncio`` with a per-channel map.

The routing of Pushpin and Fanout: a hash map from each channel (exact
match, no prefixes) to the set of connections subscribed to it.  A client
names its channels in the query, as it does with zmqws
(``/?topic=u17.&topic=s17.``); the map gains the connection when it opens
and loses it when it closes.  The SUB socket subscribes to a channel when
its first connection comes and unsubscribes when its last one goes, as zmqws
does with its prefixes, so both gateways get the same messages from the
publisher.  A message is ``[channel, payload]``: one dictionary look-up of the
channel, then ``transport.send(WSMsgType.BINARY, payload)`` to each
connection in its set.  WebSocket side as ``ref_picows.py`` (the fastest
Python reference of ``fanout.py``): picows, auto-pong, no compression, one
``asyncio.sleep(0)`` after each message.

    python benchmarks/ref_channels.py --sub tcp://127.0.0.1:5556 --port 8765
"""

from __future__ import annotations

import asyncio
import signal
from typing import Dict, List, Set
from urllib.parse import parse_qs, urlsplit

import zmq
import zmq.asyncio
from picows import WSListener, WSMsgType, WSTransport, ws_create_server

from refcommon import reference_options, subscriber


class Channels:
    """channel -> the open transports subscribed to it, and the SUB socket's subscriptions."""

    def __init__(self, sub: zmq.asyncio.Socket) -> None:
        self.sub = sub
        self.members: Dict[bytes, Set[WSTransport]] = {}

    def add(self, transport: WSTransport, channels: List[bytes]) -> None:
        for channel in channels:
            members = self.members.get(channel)
            if members is None:
                members = self.members[channel] = set()
                self.sub.setsockopt(zmq.SUBSCRIBE, channel)
            members.add(transport)

    def remove(self, transport: WSTransport, channels: List[bytes]) -> None:
        for channel in channels:
            members = self.members.get(channel)
            if members is not None:
                members.discard(transport)
                if not members:
                    del self.members[channel]
                    self.sub.setsockopt(zmq.UNSUBSCRIBE, channel)


def channels_of(path: object) -> List[bytes]:
    """The ``topic`` query parameters of a request path (each a channel)."""
    text = path.decode("latin-1") if isinstance(path, bytes) else str(path)
    return [t.encode() for t in parse_qs(urlsplit(text).query).get("topic", [])]


class Listener(WSListener):
    def __init__(self, channels: Channels, names: List[bytes]) -> None:
        super().__init__()
        self.channels = channels
        self.names = names

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.channels.add(transport, self.names)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.channels.remove(transport, self.names)


async def forward(sub: zmq.asyncio.Socket, channels: Channels) -> None:
    members = channels.members
    while True:
        parts = await sub.recv_multipart()
        transports = members.get(parts[0])
        if transports:
            payload = parts[-1]
            for transport in transports:
                transport.send(WSMsgType.BINARY, payload)
        await asyncio.sleep(0)  # as ref_picows.py


async def main() -> None:
    p = reference_options("picows + zmq.asyncio gateway with a per-channel map (Pushpin-like)")
    args = p.parse_args()

    ctx, sub = subscriber(args, prefixes=())
    channels = Channels(sub)

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    server = await ws_create_server(lambda request: Listener(channels, channels_of(request.path)),
                                    args.host, args.port, backlog=1024)
    task = asyncio.create_task(forward(sub, channels))
    await stop
    task.cancel()
    server.close()
    for transports in list(channels.members.values()):
        for transport in list(transports):
            transport.disconnect()
    sub.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    asyncio.run(main())
