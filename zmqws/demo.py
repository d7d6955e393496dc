"""The built-in demo publisher: a ticking stream of sample messages on a ZeroMQ PUB socket.

``python -m zmqws --demo`` runs it on its own thread, bound to a free local
port, and points the gateway's SUB socket at it.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from typing import Any, Dict, Optional

import zmq

__all__ = ["DemoPublisher"]

SYMBOLS = {"AAPL": 190.0, "MSFT": 410.0, "NVDA": 120.0, "EURUSD": 1.08}
HEADLINES = [
    "Markets open higher", "Central bank holds rates", "Tech earnings beat estimates",
    "Oil slips on supply news", "Bond yields edge down", "Volatility stays low",
]


class DemoPublisher:
    """Publishes ``[topic, JSON]`` messages (``prices.<SYMBOL>`` and ``news``) at ``rate`` per second."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:*", rate: float = 10.0,
                 context: Optional[zmq.Context[Any]] = None) -> None:
        self._context = context or zmq.Context.instance()
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(endpoint)
        self.endpoint = self._pub.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zmqws-demo", daemon=True)
        self.sent = 0

    def start(self) -> "DemoPublisher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pub.close(linger=0)

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
            self._pub.send_multipart([topic.encode(), json.dumps(body).encode()])
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))
