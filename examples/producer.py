#!/usr/bin/env python3
"""A ZeroMQ PUB publisher for trying the gateway: ``[topic, JSON]`` messages at a steady rate.

    python examples/producer.py --bind tcp://127.0.0.1:5556 --rate 10
    python -m zmqws --sub tcp://127.0.0.1:5556 --port 8080
"""

import argparse
import json
import time

import zmq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="tcp://127.0.0.1:5556", help="endpoint to bind the PUB socket to")
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second (default 10)")
    parser.add_argument("--topic", default="ticks", help="topic (first message part)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many (0 = forever)")
    args = parser.parse_args()

    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(args.bind)
    print(f"publishing on {args.bind} at {args.rate}/s, topic {args.topic!r}", flush=True)
    period = 1.0 / args.rate
    seq = 0
    next_at = time.monotonic()
    try:
        while not args.count or seq < args.count:
            seq += 1
            body = json.dumps({"seq": seq, "time": time.time()})
            pub.send_multipart([args.topic.encode(), body.encode()])
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        pub.close(linger=100)


if __name__ == "__main__":
    main()
