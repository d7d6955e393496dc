#!/usr/bin/env python3
"""A minimal WebSocket client (the ``websockets`` library) that prints what the gateway sends.

    python examples/client.py ws://127.0.0.1:8080/
"""

import argparse
import asyncio

from websockets.asyncio.client import connect


async def run(url: str, count: int) -> None:
    async with connect(url) as ws:
        received = 0
        async for message in ws:
            print(message if isinstance(message, str) else f"<{len(message)} bytes>", flush=True)
            received += 1
            if count and received >= count:
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="ws://127.0.0.1:8080/")
    parser.add_argument("--count", type=int, default=0, help="stop after this many messages (0 = never)")
    args = parser.parse_args()
    try:
        asyncio.run(run(args.url, args.count))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
