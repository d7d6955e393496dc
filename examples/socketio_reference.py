#!/usr/bin/env python3
"""The reference Socket.IO server of the protocol documents, as a ZeroMQ application over ``--rpc``.

    python examples/socketio_reference.py --bind tcp://127.0.0.1:5560
    python -m zmqws --rpc tcp://127.0.0.1:5560 --port 3000 --sio-namespace custom ...

(the full command is in docs/socketio.md).  Like the server of socket.io-protocol's test
suite: on connect (namespaces ``/`` and ``/custom``) it emits ``auth`` with the client's
CONNECT payload; ``message`` is answered with ``message-back`` and the same arguments;
``message-with-ack`` is acknowledged with the same arguments, binary ones included.  The
frames are those of docs/two-way.md: a ROUTER, no delimiter frame.
"""

import argparse
import json
from typing import List

import zmq


def handle(router: zmq.Socket, gateway: bytes, parts: List[bytes]) -> None:
    """One message of a gateway: ``connect``, ``message`` or ``request`` (others ignored)."""
    kind, client_id = parts[0], parts[1]
    if kind == b"connect":
        info = json.loads(parts[2])
        auth = json.dumps([info.get("auth", {})]).encode()
        router.send_multipart([gateway, b"send", client_id, b"auth", auth])
    elif kind == b"message" and parts[2] == b"message":
        # the same arguments (payload: their JSON array), binary ones (the attachments) too
        router.send_multipart([gateway, b"send", client_id, b"message-back", *parts[3:]])
    elif kind == b"request":
        request_id, topic = parts[2], parts[3]
        if topic == b"message-with-ack":
            router.send_multipart([gateway, b"reply", client_id, request_id, b"ok", *parts[4:]])
        else:
            router.send_multipart([gateway, b"reply", client_id, request_id, b"error",
                                   json.dumps(f"no handler for {topic.decode()!r}").encode()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="tcp://127.0.0.1:5560", help="endpoint of the ROUTER (the gateway's --rpc)")
    args = parser.parse_args()
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.bind(args.bind)
    print(f"reference application on {args.bind}", flush=True)
    try:
        while True:
            gateway, *parts = router.recv_multipart()
            if len(parts) >= 3:
                handle(router, gateway, parts)
    except KeyboardInterrupt:
        pass
    finally:
        router.close(linger=0)


if __name__ == "__main__":
    main()
