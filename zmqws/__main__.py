"""The command line: ``python -m zmqws --sub ENDPOINT --port N`` (console script ``zmqws``)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from . import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .gateway import Gateway

log = logging.getLogger("zmqws")


def _size(text: str) -> int:
    """A byte count with an optional K/M/G suffix (binary units): 4M = 4 MiB."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 65536, 64K, 4M)")
    return int(float(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2)])


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zmqws",
        description="Push messages from ZeroMQ publishers to WebSocket clients "
                    "(a SUB socket and an RFC 6455 server on one poll loop).",
        epilog="Examples:\n"
               "  zmqws --demo                                  # built-in publisher, page at http://127.0.0.1:8080/\n"
               "  zmqws --sub tcp://127.0.0.1:5556 --port 8080  # forward a PUB socket's messages\n"
               "  zmqws --sub tcp://*:5556 --bind               # publishers connect to the gateway",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("ZeroMQ side")
    src.add_argument("--sub", metavar="ENDPOINT", action="append", default=[],
                     help="ZeroMQ endpoint the SUB socket connects to (repeatable), e.g. tcp://127.0.0.1:5556")
    src.add_argument("--bind", action="store_true",
                     help="bind the SUB socket to the --sub endpoints instead of connecting")
    src.add_argument("--rcvhwm", type=int, default=100_000, metavar="N",
                     help="SUB receive high-water mark in messages (default: %(default)s)")
    src.add_argument("--demo", action="store_true",
                     help="run a built-in publisher of sample messages and connect to it")
    src.add_argument("--subscribe-all", action="store_true",
                     help="keep an upstream subscription to every topic even with no client connected "
                          "(default: the SUB socket subscribes to what connected clients want)")
    src.add_argument("--linger", type=_seconds, default=10.0, metavar="S",
                     help="keep an upstream subscription this long after its last client left, so a "
                          "client back after a blip misses nothing; 0 drops it at once (default: %(default)s)")
    src.add_argument("--push", metavar="ENDPOINT",
                     help="forward client messages upstream on a PUSH socket as "
                          "[topic, client id, payload] (connects, or binds with --bind)")
    src.add_argument("--pub", metavar="ENDPOINT",
                     help="forward client messages upstream on a PUB (an XPUB with XPUB_NODROP: "
                          "a message a subscriber's full queue cannot take is dropped and counted) "
                          "instead of PUSH")
    src.add_argument("--upstream-topic", default="ws", metavar="TOPIC",
                     help="topic of forwarded client messages that name none (default: %(default)s)")
    src.add_argument("--history", type=int, default=1000, metavar="N",
                     help="messages kept for clients resuming with ?since=ID (default: %(default)s; 0 = none)")
    src.add_argument("--history-bytes", type=_size, default=16 << 20, metavar="BYTES",
                     help="bytes of payload kept in the history at most (default: 16M)")
    web = p.add_argument_group("WebSocket side")
    web.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default: %(default)s; 0.0.0.0 for every interface)")
    web.add_argument("--port", type=_port, default=8080, help="port to listen on (default: %(default)s; 0 = any free port)")
    web.add_argument("--payload", choices=("auto", "text", "binary"), default="auto",
                     help="frame type for messages: auto (or text) = text when the payload is valid "
                          "UTF-8, else binary; binary = always binary (default: %(default)s)")
    web.add_argument("--format", choices=("payload", "topic", "json"), default="payload",
                     help="what clients receive: the payload only, topic+separator+payload, or JSON "
                          "{id, topic, data}; a client may choose with ?format= (default: %(default)s)")
    web.add_argument("--separator", default=" ", metavar="TEXT",
                     help="separator between topic and payload in --format topic (default: a space)")
    web.add_argument("--require-topic", action="store_true",
                     help="refuse (400) clients that name no ?topic= (default: no topic = everything)")
    web.add_argument("--no-deflate", action="store_true",
                     help="do not negotiate permessage-deflate compression")
    web.add_argument("--deflate-threshold", type=_size, default=128, metavar="BYTES",
                     help="send messages shorter than this uncompressed (default: %(default)s)")
    web.add_argument("--deflate-mem-level", type=int, default=8, choices=range(1, 10), metavar="1-9",
                     help="zlib memory level for compression (default: %(default)s)")
    web.add_argument("--static-dir", metavar="DIR",
                     help="also serve the files of this folder over HTTP (before the built-in page "
                          "and /zmqws.js); nothing outside it is ever served")
    web.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="send CORS headers to pages from this origin (repeatable; * for any) "
                          "on HTTP responses (/events, /poll, files); none by default")
    web.add_argument("--sse-heartbeat", type=_seconds, default=15.0, metavar="S",
                     help="a comment line on idle Server-Sent Events streams this often (default: %(default)s)")
    web.add_argument("--poll-timeout", type=_seconds, default=25.0, metavar="S",
                     help="how long a long-polling request is held when there is nothing to send "
                          "(default: %(default)s)")
    web.add_argument("--subprotocol", action="append", default=[], metavar="NAME",
                     help="a subprotocol the server accepts, in order of preference (repeatable)")
    sio = p.add_argument_group("Socket.IO side (socket.io-client v3/v4, python-socketio; see docs/socketio.md)")
    sio.add_argument("--no-socketio", action="store_true",
                     help="do not serve Socket.IO (Engine.IO v4) clients (default: served under --sio-path)")
    sio.add_argument("--sio-path", default="/socket.io/", metavar="PATH",
                     help="the Engine.IO path, the client's 'path' option (default: %(default)s)")
    sio.add_argument("--sio-event", default="message", metavar="NAME|topic",
                     help="the event name of each message, or 'topic' to use the message's topic "
                          "(single-part messages stay 'message') (default: %(default)s)")
    sio.add_argument("--sio-ping-interval", type=_seconds, default=25.0, metavar="S",
                     help="Engine.IO heartbeat: a ping this often (default: %(default)s)")
    sio.add_argument("--sio-ping-timeout", type=_seconds, default=20.0, metavar="S",
                     help="close a Socket.IO session that does not answer a ping within this "
                          "(default: %(default)s)")
    sec = p.add_argument_group("security")
    sec.add_argument("--certfile", metavar="FILE",
                     help="serve wss:// and https:// with this PEM certificate (chain)")
    sec.add_argument("--keyfile", metavar="FILE", help="the private key of --certfile (if not in it)")
    sec.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                     help="accept browser pages from this origin only (repeatable), e.g. "
                          "https://example.com; others get 403; default: any origin")
    sec.add_argument("--token", metavar="TOKEN",
                     help="require this shared token as ?token=TOKEN or 'Authorization: Bearer TOKEN' "
                          "(compared in constant time); else 401. Prefer the ZMQWS_TOKEN environment "
                          "variable, which process listings do not show")
    sec.add_argument("--no-metrics", action="store_true", help="do not serve GET /metrics")
    lim = p.add_argument_group("limits and timeouts")
    lim.add_argument("--max-connections", type=int, default=10000, metavar="N",
                     help="connections at most; beyond, new ones get 503 (default: %(default)s)")
    lim.add_argument("--max-connections-per-address", type=int, default=0, metavar="N",
                     help="connections at most from one client IP address; 0 = no limit (default; "
                          "behind a reverse proxy every client has the proxy's address)")
    lim.add_argument("--max-fragments", type=int, default=4096, metavar="N",
                     help="frames in one client message at most; more → close 1009 (default: %(default)s)")
    lim.add_argument("--idle-timeout", type=_seconds, default=0.0, metavar="S",
                     help="close a WebSocket client that sends nothing (not even pongs) this long; "
                          "0 = never (default)")
    lim.add_argument("--max-message-size", type=_size, default=1 << 20, metavar="BYTES",
                     help="largest message accepted from a client; larger → close 1009 (default: 1M)")
    lim.add_argument("--max-queue", type=_size, default=4 << 20, metavar="BYTES",
                     help="bytes queued for one client before the slow-client policy applies; "
                          "resume replays are paced to it (default: 4M)")
    lim.add_argument("--client-rate", type=float, default=100.0, metavar="N",
                     help="messages per second a client may send (bursts of as many) before it is "
                          "closed with 1008; 0 = no limit (default: %(default)s)")
    lim.add_argument("--slow-client", choices=("close", "drop"), default="close",
                     help="slow-client policy: close it with 1008, or drop messages for it and "
                          "send it a gap notice naming their ids (default: %(default)s); both are counted")
    lim.add_argument("--max-header-size", type=_size, default=8192, metavar="BYTES",
                     help="largest HTTP request head; larger → 431 (default: 8K)")
    lim.add_argument("--ping-interval", type=_seconds, default=20.0, metavar="S",
                     help="ping a client silent for this long; 0 disables keepalive (default: %(default)s)")
    lim.add_argument("--ping-timeout", type=_seconds, default=20.0, metavar="S",
                     help="close (1011) a client that does not answer a ping within this (default: %(default)s)")
    lim.add_argument("--handshake-timeout", type=_seconds, default=10.0, metavar="S",
                     help="time allowed to send the HTTP request (default: %(default)s)")
    lim.add_argument("--close-timeout", type=_seconds, default=3.0, metavar="S",
                     help="time to wait for the peer during a close (default: %(default)s)")
    scale = p.add_argument_group("scale-out")
    scale.add_argument("--workers", type=int, default=1, metavar="N",
                       help="run N worker processes sharing the port (SO_REUSEPORT), each with its "
                            "own SUB socket and loop, behind an id-stamping forwarder so that a "
                            "client may resume on any worker; the parent restarts crashed workers "
                            "(default: %(default)s)")
    scale.add_argument("--upstream-ids", action="store_true",
                       help="take message ids from upstream: messages are [first part, 8-byte id, "
                            "...] as stamped by 'python -m zmqws.proxy --stamp'")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log more (-v: connections, -vv: debug)")
    p.add_argument("--version", action="version", version=f"zmqws {__version__}")
    return p


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(min(level, logging.INFO))  # startup lines are always shown


def build_gateway(args: argparse.Namespace, endpoints: List[str], **overrides: Any) -> "Gateway":
    """The Gateway the parsed arguments describe (raises ValueError/OSError on bad settings)."""
    from .gateway import Gateway

    ssl_context = None
    if args.certfile:
        from .tls import server_context
        try:
            ssl_context = server_context(args.certfile, args.keyfile)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ValueError(f"cannot load the certificate: {exc}") from None
    token = args.token or os.environ.get("ZMQWS_TOKEN")
    authenticate = None
    if token:
        from .auth import token_authenticator
        authenticate = token_authenticator(token)
    options: Dict[str, Any] = dict(
        host=args.host, bind=args.bind and not args.demo,
        payload_mode=args.payload, rcvhwm=args.rcvhwm, subprotocols=args.subprotocol,
        envelope=args.format, separator=args.separator.encode("utf-8"),
        require_topic=args.require_topic, subscribe_all=args.subscribe_all, linger=args.linger,
        history=args.history, history_bytes=args.history_bytes,
        push_endpoint=args.push, pub_endpoint=args.pub,
        upstream_topic=args.upstream_topic.encode("utf-8"), client_rate=args.client_rate,
        deflate=not args.no_deflate, deflate_threshold=args.deflate_threshold,
        deflate_mem_level=args.deflate_mem_level, static_dir=args.static_dir,
        cors_origins=args.cors_origin, sse_heartbeat=args.sse_heartbeat,
        poll_timeout=args.poll_timeout, ssl_context=ssl_context,
        allow_origins=args.allow_origin, authenticate=authenticate, metrics=not args.no_metrics,
        upstream_ids=args.upstream_ids,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
        max_fragments=args.max_fragments, idle_timeout=args.idle_timeout,
        max_message_size=args.max_message_size, max_queue=args.max_queue,
        slow_client=args.slow_client, max_header_size=args.max_header_size,
        ping_interval=args.ping_interval, ping_timeout=args.ping_timeout,
        handshake_timeout=args.handshake_timeout, close_timeout=args.close_timeout,
        socketio=not args.no_socketio, sio_path=args.sio_path, sio_event=args.sio_event,
        sio_ping_interval=args.sio_ping_interval, sio_ping_timeout=args.sio_ping_timeout)
    port = overrides.pop("port", args.port)
    options.update(overrides)
    return Gateway(endpoints, port, **options)


def serve(gateway: "Gateway", args: argparse.Namespace, endpoints: List[str], demo: Any = None) -> int:
    """Start ``gateway``, log where it listens, run until SIGINT/SIGTERM; the exit status."""
    try:
        gateway.start()
    except (OSError, ValueError) as exc:
        if demo is not None:
            demo.stop()
        print(f"zmqws: error: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum, frame):  # noqa: ARG001
        # One graceful stop: a second SIGTERM (systemd's KillMode=control-group signals every
        # process, and a --workers parent forwards its own) must not cut it short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    try:  # from here on, a signal (even before run() waits) means a graceful stop
        signal.signal(signal.SIGTERM, on_signal)
        shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
        ws_scheme, http_scheme = ("wss", "https") if gateway.ssl_context else ("ws", "http")
        log.info("zmqws %s listening on %s://%s:%d/ (page: %s://%s:%d/), SUB %s %s",
                 __version__, ws_scheme, args.host, gateway.port, http_scheme, shown_host, gateway.port,
                 "bound to" if gateway.bind else "connected to", ", ".join(endpoints))
        if args.demo and demo is not None:
            print(f"zmqws demo: open {http_scheme}://{shown_host}:{gateway.port}/ in a browser "
                  "(Ctrl-C to stop)", flush=True)
        gateway.run()
    except KeyboardInterrupt:
        gateway.stop()
    finally:
        if demo is not None:
            demo.stop()
    log.info("stopped: %s", gateway.stats.as_dict())
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if not args.sub and not args.demo:
        parser.error("give at least one --sub ENDPOINT (or --demo)")
    if args.push and args.pub:
        parser.error("give --push or --pub, not both")
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not args.sio_path.startswith("/"):
        parser.error("--sio-path must start with /")
    if args.sio_ping_interval <= 0 or args.sio_ping_timeout <= 0:
        parser.error("--sio-ping-interval and --sio-ping-timeout must be more than 0")

    demo = None
    endpoints = list(args.sub)
    if args.demo:
        from .demo import DemoPublisher
        demo = DemoPublisher().start()
        endpoints.append(demo.endpoint)
    if args.workers > 1:
        from .workers import Supervisor
        try:
            return Supervisor(args, endpoints).run()
        finally:
            if demo is not None:
                demo.stop()
    try:
        gateway = build_gateway(args, endpoints)
    except ValueError as exc:
        if demo is not None:
            demo.stop()
        print(f"zmqws: error: {exc}", file=sys.stderr)
        return 1
    return serve(gateway, args, endpoints, demo)


if __name__ == "__main__":
    sys.exit(main())
