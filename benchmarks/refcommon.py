"""What the Python reference gateways of the benchmarks share: their options and their SUB socket.

Every reference gateway takes ``--sub ENDPOINT --port P [--host H] [--rcvhwm N]``
and reads ZeroMQ through a ``zmq.asyncio`` SUB socket set up the same way
(linger 0, the benchmark's receive HWM, subscribed to everything unless told
otherwise), so the stacks differ only in their WebSocket side.
"""

from __future__ import annotations

import argparse
from typing import Iterable, Tuple

import zmq
import zmq.asyncio


def reference_options(description: str) -> argparse.ArgumentParser:
    """The options every reference gateway takes; add yours, then ``parse_args()``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--sub", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rcvhwm", type=int, default=100_000)
    return p


def subscriber(args: argparse.Namespace,
               prefixes: Iterable[bytes] = (b"",)) -> Tuple[zmq.asyncio.Context, zmq.asyncio.Socket]:
    """A new asyncio context and its SUB socket subscribed to ``prefixes`` (default: everything;
    none: the caller subscribes as its clients come), connected to ``args.sub``."""
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, args.rcvhwm)
    for prefix in prefixes:
        sub.setsockopt(zmq.SUBSCRIBE, prefix)
    sub.connect(args.sub)
    return ctx, sub
