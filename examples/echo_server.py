#!/usr/bin/env python3
"""An echo server on zmqws's public WebSocket server API.

Every message a client sends comes back to it unchanged.  Limits are raised
to 16 MiB messages so that conformance suites (Autobahn TestSuite) can run
their large-message cases:

    python examples/echo_server.py --port 9001
"""

import argparse
import logging

import zmqws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--no-deflate", action="store_true", help="do not offer permessage-deflate")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")

    server = zmqws.WebSocketServer(
        args.port, host=args.host,
        max_message_size=16 << 20, max_fragments=0, max_queue=64 << 20, deflate=not args.no_deflate,
        on_message=lambda client, data: client.send(data),
    )
    server.start()
    print(f"echo server on ws://{args.host}:{server.port}/", flush=True)
    server.run()


if __name__ == "__main__":
    main()
