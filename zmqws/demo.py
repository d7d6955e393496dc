"""The built-in demo: a publisher (a ticking stream of sample messages on a ZeroMQ PUB socket)
and a two-way application (a ROUTER answering requests and echoing messages, see
docs/two-way.md).

``python -m zmqws --demo`` runs each on its own thread, bound to a free local
port, and points the gateway's SUB socket (and, without ``--rpc``, its DEALER) at them.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from typing import Any, Dict, Optional, TypeVar

import zmq

__all__ = ["DemoApplication", "DemoPublisher"]

SYMBOLS = {"AAPL": 190.0, "MSFT": 410.0, "NVDA": 120.0, "EURUSD": 1.08}
HEADLINES = [
    "Markets open higher", "Central bank holds rates", "Tech earnings beat estimates",
    "Oil slips on supply news", "Bond yields edge down", "Volatility stays low",
]


T = TypeVar("T", bound="_DemoThread")


class _DemoThread:
    """A ZeroMQ socket bound to ``endpoint`` and served by a thread of its own until :meth:`stop`."""

    def __init__(self, kind: int, endpoint: str, name: str, context: Optional[zmq.Context[Any]]) -> None:
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(kind)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(endpoint)
        self.endpoint = self._socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self: T) -> T:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._socket.close(linger=0)

    def _run(self) -> None:
        raise NotImplementedError


class DemoPublisher(_DemoThread):
    """Publishes ``[topic, JSON]`` messages (``prices.<SYMBOL>`` and ``news``) at ``rate`` per second."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:*", rate: float = 10.0,
                 context: Optional[zmq.Context[Any]] = None) -> None:
        super().__init__(zmq.PUB, endpoint, "zmqws-demo", context)
        self.rate = rate
        self.sent = 0

    def _run(self) -> None:
        prices = dict(SYMBOLS)
        rng = random.Random(6455)
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sent += 1
            if self.sent % 25 == 0:
                topic = "news"
                body: Dict[str, Any] = {"headline": rng.choice(HEADLINES)}
            else:
                symbol = rng.choice(list(prices))
                drift = math.sin(self.sent / 50.0) * 0.001
                prices[symbol] *= 1 + drift + rng.gauss(0, 0.002)
                topic = "prices." + symbol
                body = {"symbol": symbol, "price": round(prices[symbol], 4)}
            body.update(seq=self.sent, time=round(time.time(), 3))
            self._socket.send_multipart([topic.encode(), json.dumps(body).encode()])
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))


class DemoApplication(_DemoThread):
    """The two-way demo application on a ROUTER (docs/two-way.md, "The frames"): answers the
    requests ``demo.echo`` (the data back, with the server time) and ``demo.time`` (the server
    time), any other topic with an error; a ``message`` goes back to its client as a ``send``
    on ``demo.echo``."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:*",
                 context: Optional[zmq.Context[Any]] = None) -> None:
        super().__init__(zmq.ROUTER, endpoint, "zmqws-demo-app", context)
        self.answered = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._socket.poll(100):
                self._handle(self._socket.recv_multipart())

    def _handle(self, frames: "list[bytes]") -> None:
        """One frame set from a gateway: ``[identity, kind, client id, ...]``."""
        if len(frames) < 3:
            return
        gateway, kind, client = frames[:3]
        if kind == b"request" and len(frames) >= 6:
            outcome, body = self.answer(frames[4].decode("utf-8", "replace"), frames[5])
            self._socket.send_multipart([gateway, b"reply", client, frames[3], outcome, body])
            self.answered += 1
        elif kind == b"message" and len(frames) >= 5:
            echo = {"echo": frames[4].decode("utf-8", "replace"), "time": round(time.time(), 3)}
            self._socket.send_multipart([gateway, b"send", client, b"demo.echo", json.dumps(echo).encode()])

    @staticmethod
    def answer(topic: str, payload: bytes) -> "tuple[bytes, bytes]":
        """The outcome (``ok``/``error``) and payload of a request on ``topic``."""
        now = round(time.time(), 3)
        if topic == "demo.echo":
            try:
                data = json.loads(payload)
            except ValueError:
                data = payload.decode("utf-8", "replace")
            return b"ok", json.dumps({"echo": data, "time": now}).encode()
        if topic == "demo.time":
            iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
            return b"ok", json.dumps({"time": now, "iso": iso}).encode()
        return b"error", json.dumps(f"unknown topic {topic!r}: try demo.echo or demo.time").encode()
