"""Integration tests of the Gateway as a whole: a real PUB socket → Gateway → clients on 127.0.0.1.

Fan-out to many clients in order, multipart messages, payload modes, ``publish()``
from another thread and without ZeroMQ, the counters, one route's failure
contained, and slow consumers that do not hurt the others.  Each room's own
tests are in tests/test_<module>.py (test_websocket, test_sse, test_poll,
test_socketio, test_upstream, test_httpapp, test_hub...)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from conftest import ws_connect
from zmqws.protocol.frames import OP_TEXT
from zmqws.wire import Envelopes
from zmqws.gateway import Gateway

pytestmark = pytest.mark.timeout(40)

KiB = 1 << 10




async def open_clients(port: int, n: int):
    return [await ws_connect(port) for _ in range(n)]


async def close_clients(clients) -> None:
    await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)


# -- fan-out ----------------------------------------------------------------------------------


def test_every_client_gets_every_message_in_order(gateway, pub, run_async, wait_until):
    n_clients, n_messages = 20, 500
    before = gateway.stats.as_dict()

    async def main():
        clients = await open_clients(gateway.port, n_clients)
        try:
            assert gateway.clients == n_clients

            async def consume(ws):
                return [await ws.recv() for _ in range(n_messages)]

            consumers = [asyncio.ensure_future(consume(ws)) for ws in clients]
            for seq in range(n_messages):
                pub.send(json.dumps({"seq": seq, "pad": "x" * (seq % 50)}).encode())
            return await asyncio.gather(*consumers)
        finally:
            await close_clients(clients)

    results = run_async(main())
    for received in results:
        assert [json.loads(m)["seq"] for m in received] == list(range(n_messages))
        assert all(isinstance(m, str) for m in received)
    stats = gateway.stats
    assert stats.zmq_messages - before["zmq_messages"] == n_messages
    assert stats.messages_out - before["messages_out"] == n_messages * n_clients
    assert stats.drops == 0
    wait_until(lambda: gateway.clients == 0, timeout=2, message="the clients to be gone")


def test_multipart_message_payload_is_last_part(gateway, pub, run_async):
    async def main():
        async with ws_connect(gateway.port) as ws:
            pub.send_multipart([b"prices.AAPL", b"{\"price\": 1}"])
            pub.send_multipart([b"topic", b"meta", b"the payload"])
            pub.send_multipart([b"single"])
            return [await ws.recv() for _ in range(3)]
    assert run_async(main()) == ["{\"price\": 1}", "the payload", "single"]


@pytest.mark.parametrize("mode, sent, expected", [
    ("auto", b"hello", "hello"),
    ("auto", "é ✓ 𝄞".encode(), "é ✓ 𝄞"),
    ("auto", b"\xff\x00\x80", b"\xff\x00\x80"),
    ("auto", b"", ""),
    ("text", b"hello", "hello"),
    ("binary", b"hello", b"hello"),
    ("binary", b"\xff", b"\xff"),
], ids=["auto-ascii", "auto-utf8", "auto-invalid", "auto-empty", "text", "binary", "binary-invalid"])
def test_payload_mode(make_gateway, pub, run_async, wait_subscribed, mode, sent, expected):
    gw = make_gateway(pub.endpoint, payload_mode=mode)
    wait_subscribed(pub, gw)

    async def main():
        async with ws_connect(gw.port) as ws:
            pub.send(sent)
            return await ws.recv()
    received = run_async(main())
    assert type(received) is type(expected)
    assert received == expected


def test_payload_mode_is_validated():
    with pytest.raises(ValueError, match="payload_mode"):
        Gateway(None, 0, payload_mode="json")


def test_large_message(gateway, pub, run_async):
    payload = bytes(range(256)) * 1024  # 256 KiB, not UTF-8
    async def main():
        async with ws_connect(gateway.port) as ws:
            pub.send(payload)
            pub.send(b"after")
            return await ws.recv(), await ws.recv()
    assert run_async(main()) == (payload, "after")


def test_publish_from_another_thread_reaches_every_client(gateway, run_async):
    n_clients, n_messages = 5, 200
    before = gateway.stats.as_dict()

    async def main():
        clients = await open_clients(gateway.port, n_clients)
        try:
            def produce():
                for i in range(n_messages):
                    gateway.publish(f"m{i}" if i % 2 == 0 else f"b{i}".encode() + b"\xff")

            producer = threading.Thread(target=produce)
            producer.start()
            try:
                async def consume(ws):
                    return [await ws.recv() for _ in range(n_messages)]

                results = await asyncio.gather(*(consume(ws) for ws in clients))
            finally:
                await asyncio.to_thread(producer.join, 5)
            return results
        finally:
            await close_clients(clients)

    expected = [f"m{i}" if i % 2 == 0 else f"b{i}".encode() + b"\xff" for i in range(n_messages)]
    for received in run_async(main()):
        assert received == expected
    assert gateway.stats.zmq_messages - before["zmq_messages"] == n_messages
    assert gateway.stats.messages_out - before["messages_out"] == n_messages * n_clients


def test_gateway_without_zmq_endpoint_serves_publish(make_gateway, run_async):
    gw = make_gateway(None)

    async def main():
        async with ws_connect(gw.port) as a, ws_connect(gw.port) as b:
            gw.publish("to everyone")
            gw.publish(b"\xff\x01", topic="t")
            return [await a.recv(), await a.recv(), await b.recv(), await b.recv()]
    assert run_async(main()) == ["to everyone", b"\xff\x01"] * 2
    assert gw.stats.zmq_messages == 2
    assert gw.last_id >= 2  # ids only grow


def test_counters_follow_clients(gateway, pub, run_async, wait_until):
    async def main():
        clients = await open_clients(gateway.port, 3)
        assert gateway.clients == 3
        await clients[0].close()
        await asyncio.to_thread(wait_until, lambda: gateway.clients == 2, 2)
        before = gateway.stats.messages_out
        pub.send(b"two get this")
        for ws in clients[1:]:
            assert await ws.recv() == "two get this"
        assert gateway.stats.messages_out - before == 2
        await close_clients(clients)
    run_async(main())
    wait_until(lambda: gateway.clients == 0, timeout=2)
    assert gateway.stats.ws_connections >= 3


# -- an exception in one route ------------------------------------------------------------------


def test_an_exception_in_one_route_costs_that_route_one_turn_only(make_gateway, raw_ws, wait_until,
                                                                  monkeypatch):
    gw = make_gateway(None)
    failing = raw_ws(gw.port, path="/?format=json")  # the first route of the turn
    others = [raw_ws(gw.port, path=f"/?format={fmt}") for fmt in ("payload", "topic")]
    wait_until(lambda: len(gw.hub.subscribers) == 3)
    body = Envelopes.body

    def broken(self, m, envelope):
        if envelope == "json":
            raise RuntimeError("a bug in one envelope")
        return body(self, m, envelope)

    monkeypatch.setattr(Envelopes, "body", broken)
    gw.publish("lost for json")
    wait_until(lambda: gw.stats.send_errors == 1)
    monkeypatch.setattr(Envelopes, "body", body)  # fixed
    gw.publish("next")
    for ws in others:  # single-part messages: the same in the payload and topic envelopes
        assert [ws.recv_frame()[2] for _ in range(2)] == [b"lost for json", b"next"]
    assert json.loads(failing.recv_frame()[2])["data"] == "next"
    assert all(not route.pending for route in gw.hub.router.routes())


# -- slow consumers -------------------------------------------------------------------------------


def _seq_of(frame_payload: bytes) -> int:
    return int(frame_payload[:8])


@pytest.mark.parametrize("policy", ["close", "drop"])
def test_slow_consumer_does_not_hurt_others(make_gateway, pub, raw_ws, run_async, wait_subscribed,
                                            policy):
    max_queue = 256 * KiB
    n_good = 50
    gw = make_gateway(pub.endpoint, max_queue=max_queue, slow_client=policy, close_timeout=10.0)
    wait_subscribed(pub, gw)
    slow = raw_ws(gw.port, rcvbuf=4096)  # handshake done; never reads from here on

    # Sample every client's queue after every loop turn, on the loop thread.
    peak = {"bytes": 0, "turns": 0}

    def sample():
        peak["turns"] += 1
        for client in gw.client_list():
            if client.ws.out_bytes > peak["bytes"]:
                peak["bytes"] = client.ws.out_bytes

    gw.call_soon_threadsafe(lambda: gw.loop.after_turn.append(sample))

    chunk, window, min_messages, max_messages = 50, 100, 2000, 20000
    message = b"%08d " + b"x" * (KiB - 9)

    def overflowed() -> bool:
        return (gw.stats.slow_closed if policy == "close" else gw.stats.dropped_slow) > 0

    async def main():
        clients = await open_clients(gw.port, n_good)
        try:
            assert gw.clients == n_good + 1
            progress = [0] * n_good
            errors = []

            async def consume(i, ws):
                expected = 0
                while True:
                    data = await ws.recv()
                    if data == "END":
                        return expected
                    seq = int(data[:8])
                    if seq != expected:
                        errors.append((i, expected, seq))
                        return expected
                    expected += 1
                    progress[i] = expected

            consumers = [asyncio.ensure_future(consume(i, ws)) for i, ws in enumerate(clients)]
            sent = 0
            while sent < min_messages or not overflowed():
                assert sent < max_messages, "the slow client never overflowed"
                # Flow control for the good clients only: never more than `window` messages ahead.
                while min(progress) < sent - window:
                    assert not errors, errors
                    await asyncio.sleep(0.001)
                for _ in range(chunk):
                    pub.send(message % sent)
                    sent += 1
                await asyncio.sleep(0)
            pub.send(b"END")
            counts = await asyncio.gather(*consumers)
            assert not errors, errors
            return sent, counts
        finally:
            gw.call_soon_threadsafe(lambda: gw.loop.after_turn.remove(sample))
            await close_clients(clients)

    sent, counts = run_async(main(), timeout=30)
    assert counts == [sent] * n_good, "a good client missed messages"
    stats = gw.stats
    assert stats.drops > 0
    assert peak["turns"] > 0
    assert peak["bytes"] <= max_queue, f"a queue reached {peak['bytes']} bytes"
    if policy == "close":
        assert stats.slow_closed == 1 and stats.dropped_slow == 0
        # The slow client got a contiguous prefix of the stream, then close 1008.
        code, reason, frames = slow.recv_close(timeout=10)
        assert code == 1008, reason
        assert [op for op, _ in frames] == [OP_TEXT] * len(frames)
        assert [_seq_of(p) for _, p in frames] == list(range(len(frames)))
        assert 0 < len(frames) < sent
    else:
        assert stats.slow_closed == 0 and stats.dropped_slow == stats.drops
        assert gw.clients == 1  # the good ones have left; the slow one stays
        # What it gets is in order, with a gap notice where messages were dropped; once it
        # has read its backlog it gets new messages again.
        seqs = []
        told = False
        while True:
            try:
                _fin, op, payload = slow.recv_frame(timeout=0.5)
            except socket.timeout:
                break
            assert op == OP_TEXT
            if payload.startswith(b'{"gap":'):
                told = True
            elif payload != b"END":
                seq = _seq_of(payload)
                assert not seqs or seq == seqs[-1] + 1 or told, f"lost {seqs[-1] + 1}..{seq - 1} untold"
                told = False
                seqs.append(seq)
        assert seqs == sorted(seqs) and 0 < len(seqs) < sent
        assert seqs[:10] == list(range(10))
        pub.send(b"after the backlog")
        frame = slow.recv_frame(timeout=5)
        if frame[2].startswith(b'{"gap":'):  # the end of the backlog was dropped: told first
            frame = slow.recv_frame(timeout=5)
        assert frame == (True, OP_TEXT, b"after the backlog")


def test_flush_interval_first_message_at_once_the_next_after_the_interval(make_gateway, run_async):
    gw = make_gateway(None, flush_interval_ms=400)

    async def main():
        async with ws_connect(gw.port) as ws:
            await asyncio.sleep(0.5)  # quiet for longer than the interval
            sent = time.monotonic()
            gw.publish("first")
            assert await ws.recv() == "first"
            first = time.monotonic() - sent
            for text in ("second", "third"):
                gw.publish(text)
            assert [await ws.recv(), await ws.recv()] == ["second", "third"]
            return first, time.monotonic() - sent
    first, rest = run_async(main())
    assert first < 0.3  # not held back
    assert 0.3 <= rest < 2.0  # held to the interval's end (0.4 s after the first), not lost
