"""WebSocket clients (zmqws/transports/websocket.py) against a real Gateway on 127.0.0.1: control
messages and their acknowledgements, client messages forwarded to ZeroMQ (PUSH/PUB, the
topic of a ``json``-envelope message, ``upstream_topic``), and the flood limit (1008)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import zmq
from websockets.exceptions import ConnectionClosed

from conftest import nothing_within, recv, recv_json, recv_parts, ws_connect

pytestmark = pytest.mark.timeout(40)


# -- control messages ------------------------------------------------------------------------------


def test_control_messages_are_acknowledged(gateway, pub, run_async):
    async def main():
        async with ws_connect(gateway.port, "/?topic=a") as ws:
            await ws.send(json.dumps({"subscribe": "b"}))
            assert await recv_json(ws) == {"ack": "subscribe", "topic": "b", "topics": ["a", "b"]}
            await ws.send(json.dumps({"subscribe": "b"}))  # already there: acknowledged, unchanged
            assert await recv_json(ws) == {"ack": "subscribe", "topic": "b", "topics": ["a", "b"]}
            await ws.send(json.dumps({"unsubscribe": "a"}))
            assert await recv_json(ws) == {"ack": "unsubscribe", "topic": "a", "topics": ["b"]}
            await ws.send(json.dumps({"unsubscribe": "zzz"}))  # not subscribed: unchanged
            assert await recv_json(ws) == {"ack": "unsubscribe", "topic": "zzz", "topics": ["b"]}
            # Not control messages: ignored (no push socket), no answer, the connection stays.
            await ws.send(json.dumps({"subscribe": 42}))
            await ws.send(json.dumps({"subscribe": "c", "extra": 1}))
            await ws.send("{not json")
            pub.send_multipart([b"a.1", b"for a"])
            pub.send_multipart([b"b.1", b"for b"])
            assert await recv(ws) == "for b"
            await ws.send(json.dumps({"unsubscribe": "b"}))
            assert await recv_json(ws) == {"ack": "unsubscribe", "topic": "b", "topics": []}
            pub.send_multipart([b"b.2", b"not any more"])
            assert await nothing_within(ws, 0.1)

        # A client that asked for no topic gets everything until it names one.
        async with ws_connect(gateway.port) as ws:
            await ws.send(json.dumps({"subscribe": "x"}))
            assert await recv_json(ws) == {"ack": "subscribe", "topic": "x", "topics": ["x"]}
            pub.send_multipart([b"y", b"not for x"])
            pub.send_multipart([b"x.1", b"for x"])
            assert await recv(ws) == "for x"

    run_async(main())


# -- client -> ZeroMQ ------------------------------------------------------------------------------


def test_client_messages_are_pushed_upstream(make_gateway, make_zmq, run_async):
    pull, endpoint = make_zmq(zmq.PULL)
    gw = make_gateway(None, push_endpoint=endpoint)

    async def main():
        async with ws_connect(gw.port) as a, ws_connect(gw.port) as b, \
                ws_connect(gw.port, "/?format=json") as j:
            await a.send("from a")
            parts_a = await asyncio.to_thread(recv_parts, pull)
            await b.send(b"\x00from b")
            parts_b = await asyncio.to_thread(recv_parts, pull)
            await a.send("again a")
            parts_a2 = await asyncio.to_thread(recv_parts, pull)
            await j.send(json.dumps({"topic": "chat.room7", "data": "hi"}))
            parts_j = await asyncio.to_thread(recv_parts, pull)
            await j.send(json.dumps({"topic": "chat.room7", "data": {"n": 1}}))
            parts_j2 = await asyncio.to_thread(recv_parts, pull)
            await j.send("plain text from a json client")
            parts_j3 = await asyncio.to_thread(recv_parts, pull)
            return parts_a, parts_b, parts_a2, parts_j, parts_j2, parts_j3

    parts_a, parts_b, parts_a2, parts_j, parts_j2, parts_j3 = run_async(main())
    assert parts_a[0] == b"ws" and parts_a[2] == b"from a" and len(parts_a) == 3
    assert parts_b[0] == b"ws" and parts_b[2] == b"\x00from b"
    assert parts_a2 == [b"ws", parts_a[1], b"again a"], "a client's id is stable"
    ids = {parts_a[1], parts_b[1], parts_j[1]}
    assert len(ids) == 3 and all(ids), "client ids differ"
    assert parts_j == [b"chat.room7", parts_j[1], b"hi"]
    assert parts_j2 == [b"chat.room7", parts_j[1], b'{"n": 1}']
    assert parts_j3 == [b"ws", parts_j[1], b"plain text from a json client"]
    assert gw.stats.upstream_messages == 6 and gw.stats.upstream_drops == 0


def test_upstream_topic_option(make_gateway, make_zmq, run_async):
    pull, endpoint = make_zmq(zmq.PULL)
    gw = make_gateway(None, push_endpoint=endpoint, upstream_topic=b"from-browser")

    async def main():
        async with ws_connect(gw.port) as ws:
            await ws.send("x")
            return await asyncio.to_thread(recv_parts, pull)
    parts = run_async(main())
    assert parts[0] == b"from-browser" and parts[2] == b"x"


def test_client_messages_are_published_upstream(make_gateway, make_zmq, run_async):
    sub, endpoint = make_zmq(zmq.SUB, subscribe=b"")
    gw = make_gateway(None, pub_endpoint=endpoint, client_rate=0)

    async def main():
        async with ws_connect(gw.port, "/?format=json") as ws:
            # PUB → SUB slow joiner: probe until the SUB's subscription has reached the PUB.
            deadline = time.monotonic() + 5
            while not sub.poll(20):
                assert time.monotonic() < deadline, "the SUB never received from the gateway's PUB"
                await ws.send("probe")
            await ws.send(json.dumps({"topic": "chat.room7", "data": "hi"}))
            while True:
                parts = await asyncio.to_thread(recv_parts, sub)
                if parts[2] != b"probe":
                    return parts
    parts = run_async(main())
    assert parts[0] == b"chat.room7" and parts[2] == b"hi" and parts[1]


def test_client_messages_without_upstream_are_ignored(gateway, pub, run_async):
    async def main():
        async with ws_connect(gateway.port) as ws:
            await ws.send("nobody listens")
            await ws.send(b"\x01\x02")
            await ws.send(json.dumps({"topic": "t", "data": "x"}))
            await ws.send(json.dumps({"subscribe": "z"}))  # processed after the three above
            assert await recv_json(ws) == {"ack": "subscribe", "topic": "z", "topics": ["z"]}
            pub.send_multipart([b"z", b"still open"])
            assert await recv(ws) == "still open"
            await ws.ping()
    run_async(main())
    assert gateway.stats.upstream_messages == 0 and gateway.stats.upstream_drops == 0
    assert gateway.stats.rate_limited == 0 and gateway.stats.protocol_errors == 0


# -- floods ----------------------------------------------------------------------------------------


def test_flood_is_closed_with_1008_and_a_steady_client_stays(make_gateway, run_async):
    rate = 20
    gw = make_gateway(None, client_rate=rate)

    async def main():
        async with ws_connect(gw.port) as flood, ws_connect(gw.port) as steady:
            async def flood_it():
                try:
                    for i in range(200):
                        await flood.send(f"m{i}")
                except ConnectionClosed:
                    pass
                await asyncio.wait_for(flood.wait_closed(), 5)
                return flood.close_code

            async def steady_it():
                # More messages than the burst (the bucket holds `rate` tokens), below the rate.
                for i in range(rate + 5):
                    await steady.send(f"s{i}")
                    await asyncio.sleep(1 / (rate * 0.6))
                await steady.send(json.dumps({"subscribe": "alive"}))
                return await recv_json(steady)

            return await asyncio.gather(flood_it(), steady_it())

    flood_code, ack = run_async(main())
    assert flood_code == 1008
    assert ack == {"ack": "subscribe", "topic": "alive", "topics": ["alive"]}
    assert gw.stats.rate_limited == 1
