"""The command line: ``python -m zmqws --sub ENDPOINT --port N`` (console script ``zmqws``).

Arguments (and a ``--config`` TOML file, keys = the long option names) become
a :class:`~zmqws.config.GatewayConfig` (:func:`config_from_args`); every
option's default is the config's.  ``--check`` validates everything, then
exits; ``--workers N`` hands the config to :class:`~zmqws.workers.Supervisor`.
Every start-up error is one line, ``zmqws: error: --FLAG VALUE: what is wrong``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from typing import Any, Dict, List, Optional

from . import __version__
from .auth import authenticator
from .config import ENVELOPES, PAYLOAD_MODES, SLOW_CLIENT_POLICIES, GatewayConfig, default, option_names
from .logs import LOG_FORMATS, setup_logging
from .service import fail, serve, start_error
from .tls import checked_server_context
from .workers import Supervisor, WorkerOptions

__all__ = ["main", "build_parser", "parse_args", "config_from_args", "check"]

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


def _milliseconds(text: str) -> float:
    value = _seconds(text)
    if value > 1000:
        raise argparse.ArgumentTypeError("at most 1000 ms")
    return value


def _size_text(value: int) -> str:
    """A byte count as a size flag takes it: 16777216 -> 16M."""
    for unit, suffix in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if value >= unit and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def _option(group: Any, flag: str, name: Optional[str] = None, **kwargs: Any) -> None:
    """A flag that sets the config field ``name`` (default: the flag's own name), with the
    config's default (:func:`zmqws.config.default`); ``%(size)s`` in its help shows it as a size."""
    name = name or flag[2:].replace("-", "_")
    value = default(name)
    if isinstance(value, tuple):  # a repeatable flag
        value = list(value)
    elif isinstance(value, bytes):  # given as text, encoded by config_from_args
        value = value.decode("utf-8")
    if "help" in kwargs and isinstance(value, int):
        kwargs["help"] = kwargs["help"].replace("%(size)s", _size_text(value))
    group.add_argument(flag, dest=name, default=value, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zmqws",
        description="Push messages from ZeroMQ publishers to WebSocket clients "
                    "(a SUB socket and an RFC 6455 server on one poll loop).",
        epilog="Examples:\n"
               "  zmqws --demo                                  # built-in publisher and application, page at http://127.0.0.1:8080/\n"
               "  zmqws --sub tcp://127.0.0.1:5556 --port 8080  # forward a PUB socket's messages\n"
               "  zmqws --sub tcp://*:5556 --bind               # publishers connect to the gateway",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("ZeroMQ side")
    _option(src, "--sub", "sub_endpoints", metavar="ENDPOINT", action="append",
            help="ZeroMQ endpoint the SUB socket connects to (repeatable), e.g. tcp://127.0.0.1:5556")
    _option(src, "--bind", action="store_true",
            help="bind the SUB socket to the --sub endpoints instead of connecting")
    _option(src, "--rcvhwm", type=int, metavar="N",
            help="SUB receive high-water mark in messages (default: %(default)s)")
    src.add_argument("--demo", action="store_true",
                     help="run a built-in publisher of sample messages and a two-way application "
                          "(demo.echo, demo.time; used as --rpc unless one is given) and connect to them")
    _option(src, "--subscribe-all", action="store_true",
            help="keep an upstream subscription to every topic even with no client connected "
                 "(default: the SUB socket subscribes to what connected clients want)")
    _option(src, "--linger", type=_seconds, metavar="S",
            help="keep an upstream subscription this long after its last client left, so a "
                 "client back after a blip misses nothing; 0 drops it at once (default: %(default)s)")
    _option(src, "--push", "push_endpoint", metavar="ENDPOINT",
            help="forward client messages upstream on a PUSH socket as "
                 "[topic, client id, payload] (connects, or binds with --bind)")
    _option(src, "--pub", "pub_endpoint", metavar="ENDPOINT",
            help="forward client messages upstream on a PUB (an XPUB with XPUB_NODROP: "
                 "a message a subscriber's full queue cannot take is dropped and counted) "
                 "instead of PUSH")
    _option(src, "--rpc", "rpc_endpoint", metavar="ENDPOINT",
            help="the two-way channel: a DEALER to the application's ROUTER (connects, or binds "
                 "with --bind) for client requests and replies, messages to and from one client, "
                 "connect/disconnect events; see docs/two-way.md")
    _option(src, "--rpc-max-inflight", type=int, metavar="N",
            help="requests of one client waiting for their reply at most; beyond, an error reply "
                 "'too many requests in flight' (default: %(default)s)")
    _option(src, "--rpc-timeout", type=_seconds, metavar="S",
            help="a request not answered within this gets the error reply 'timeout' "
                 "(default: %(default)s)")
    _option(src, "--upstream-topic", metavar="TOPIC",
            help="topic of forwarded client messages that name none (default: %(default)s)")
    _option(src, "--history", type=int, metavar="N",
            help="messages kept for clients resuming with ?since=ID (default: %(default)s; 0 = none)")
    _option(src, "--history-bytes", type=_size, metavar="BYTES",
            help="bytes of payload kept in the history at most (default: %(size)s)")
    web = p.add_argument_group("WebSocket side")
    _option(web, "--host",
            help="address to listen on (default: %(default)s; 0.0.0.0 for every interface)")
    _option(web, "--port", type=_port, help="port to listen on (default: %(default)s; 0 = any free port)")
    _option(web, "--payload", "payload_mode", choices=PAYLOAD_MODES,
            help="frame type for messages: auto (or text) = text when the payload is valid "
                 "UTF-8, else binary; binary = always binary (default: %(default)s)")
    _option(web, "--format", "envelope", choices=ENVELOPES,
            help="what clients receive: the payload only, topic+separator+payload, or JSON "
                 "{id, topic, data}; a client may choose with ?format= (default: %(default)s)")
    _option(web, "--separator", metavar="TEXT",
            help="separator between topic and payload in --format topic (default: a space)")
    _option(web, "--require-topic", action="store_true",
            help="refuse (400) clients that name no ?topic= (default: no topic = everything)")
    _option(web, "--no-deflate", "deflate", action="store_false",
            help="do not negotiate permessage-deflate compression")
    _option(web, "--deflate-threshold", type=_size, metavar="BYTES",
            help="send messages shorter than this uncompressed (default: %(default)s)")
    _option(web, "--deflate-mem-level", type=int, choices=range(1, 10), metavar="1-9",
            help="zlib memory level for compression (default: %(default)s)")
    _option(web, "--static-dir", metavar="DIR",
            help="also serve the files of this folder over HTTP (before the built-in page "
                 "and /zmqws.js); nothing outside it, and no dotfile, is ever served")
    _option(web, "--max-static-size", type=_size, metavar="BYTES",
            help="largest file served; larger ones are 404 (default: %(size)s)")
    _option(web, "--static-cache-size", type=_size, metavar="BYTES",
            help="files are served from memory: at most this many bytes of them (default: %(size)s)")
    _option(web, "--cors-origin", "cors_origins", action="append", metavar="ORIGIN",
            help="send CORS headers to pages from this origin (repeatable; * for any) "
                 "on HTTP responses (/events, /poll, files); none by default")
    _option(web, "--sse-heartbeat", type=_seconds, metavar="S",
            help="a comment line on idle Server-Sent Events streams this often (default: %(default)s)")
    _option(web, "--poll-timeout", type=_seconds, metavar="S",
            help="how long a long-polling request is held when there is nothing to send "
                 "(default: %(default)s)")
    _option(web, "--poll-coalesce", "poll_coalesce_ms", type=_milliseconds, metavar="MS",
            help="at most one answer with messages per MS milliseconds to a long-polling client "
                 "(a /poll connection, a Socket.IO polling socket), leading edge: one goes at once "
                 "if the client's previous went MS ago or more, else it waits until then, gathering "
                 "(a full one or one with a gap notice goes at once): up to MS ms more latency, "
                 "only for clients whose messages come faster; 0 = answer at once "
                 "(default: %(default)s)")
    _option(web, "--subprotocol", "subprotocols", action="append", metavar="NAME",
            help="a subprotocol the server accepts, in order of preference (repeatable)")
    sio = p.add_argument_group("Socket.IO side (socket.io-client v3/v4, python-socketio; see docs/socketio.md)")
    _option(sio, "--no-socketio", "socketio", action="store_false",
            help="do not serve Socket.IO (Engine.IO v4) clients (default: served under --sio-path)")
    _option(sio, "--sio-path", metavar="PATH",
            help="the Engine.IO path, the client's 'path' option (default: %(default)s)")
    _option(sio, "--sio-event", metavar="NAME|topic",
            help="the event name of each message, or 'topic' to use the message's topic "
                 "(single-part messages stay 'message') (default: %(default)s)")
    _option(sio, "--sio-ping-interval", type=_seconds, metavar="S",
            help="Engine.IO heartbeat: a ping this often (default: %(default)s)")
    _option(sio, "--sio-ping-timeout", type=_seconds, metavar="S",
            help="close a Socket.IO session that does not answer a ping within this "
                 "(default: %(default)s)")
    _option(sio, "--sio-namespace", "sio_namespaces", action="append", metavar="NAME",
            help="also accept Socket.IO connections to this namespace (repeatable; / always); "
                 "its topic T is the ZeroMQ topic NAME/T, e.g. chat/room1 in /chat "
                 "(default: / only)")
    _option(sio, "--no-sio-recovery", "sio_recovery", action="store_false",
            help="no connection state recovery: no pid in the CONNECT answer, no offset after "
                 "each event's arguments (for clients whose handlers take exactly the event's "
                 "arguments)")
    sec = p.add_argument_group("security")
    sec.add_argument("--certfile", metavar="FILE",
                     help="serve wss:// and https:// with this PEM certificate (chain)")
    sec.add_argument("--keyfile", metavar="FILE", help="the private key of --certfile (if not in it)")
    _option(sec, "--allow-origin", "allow_origins", action="append", metavar="ORIGIN",
            help="accept browser pages from this origin only (repeatable), e.g. "
                 "https://example.com; others get 403; default: any origin")
    _option(sec, "--allow-host", "allow_hosts", action="append", metavar="NAME",
            help="answer requests whose Host header is NAME (any port) or NAME:PORT "
                 "(repeatable); others get 403. Default: listening on a loopback address, "
                 "localhost, 127.0.0.1 and [::1] only (DNS rebinding); elsewhere any Host")
    sec.add_argument("--token", metavar="TOKEN",
                     help="require this shared token as ?token=TOKEN or 'Authorization: Bearer TOKEN' "
                          "(compared in constant time); else 401. Prefer the ZMQWS_TOKEN environment "
                          "variable, which process listings do not show")
    sec.add_argument("--token-file", metavar="FILE",
                     help="per-client rights: one 'TOKEN READ-PREFIXES [WRITE-PREFIXES]' per line "
                          "(prefixes comma-separated, * every topic, - none; no write column: none); "
                          "reloaded on SIGHUP; see docs/usage.md. With --token too, that token has every right")
    _option(sec, "--metrics-token", metavar="TOKEN",
            help="require this token (Bearer header or ?token=) for GET /metrics, and only "
                 "this one; default: the --token, if any (env ZMQWS_METRICS_TOKEN)")
    _option(sec, "--no-metrics", "metrics", action="store_false", help="do not serve GET /metrics")
    lim = p.add_argument_group("limits and timeouts")
    _option(lim, "--max-connections", type=int, metavar="N",
            help="connections at most, Socket.IO polling sessions included; beyond, new "
                 "ones get 503 (default: %(default)s)")
    _option(lim, "--max-connections-per-address", type=int, metavar="N",
            help="connections at most from one client IP address, Socket.IO polling sessions "
                 "included; 0 = no limit (default; "
                 "behind a reverse proxy every client has the proxy's address)")
    _option(lim, "--max-topics", type=int, metavar="N",
            help="topic prefixes one client may have at most; more → 400 or an error "
                 "answer (default: %(default)s)")
    _option(lim, "--max-topic-length", type=_size, metavar="BYTES",
            help="longest topic prefix a client may ask for (default: %(default)s)")
    _option(lim, "--max-upstream-prefixes", type=int, metavar="N",
            help="distinct prefixes the SUB socket subscribes to at most; a client that "
                 "would add one more is refused (503); 0 = no limit (default: %(default)s)")
    _option(lim, "--max-requests-per-connection", type=int, metavar="N",
            help="HTTP requests answered on one keep-alive connection; the last response "
                 "says 'Connection: close'; 0 = no limit (default: %(default)s)")
    _option(lim, "--max-fragments", type=int, metavar="N",
            help="frames in one client message at most; more → close 1009 (default: %(default)s)")
    _option(lim, "--idle-timeout", type=_seconds, metavar="S",
            help="close a WebSocket client that sends nothing (not even pongs) this long; "
                 "0 = never (default)")
    _option(lim, "--max-message-size", type=_size, metavar="BYTES",
            help="largest message accepted from a client; larger → close 1009 (default: %(size)s)")
    _option(lim, "--max-queue", type=_size, metavar="BYTES",
            help="bytes queued for one client before the slow-client policy applies; "
                 "resume replays are paced to it (default: %(size)s)")
    _option(lim, "--flush-interval", "flush_interval_ms", type=_milliseconds, metavar="MS",
            help="send upstream messages to clients at most once per MS milliseconds, "
                 "several in one write: less CPU per message at moderate rates with many "
                 "clients, up to MS ms more latency; the first message after a quiet "
                 "interval goes at once; 0 = after every loop turn (default)")
    _option(lim, "--client-rate", type=float, metavar="N",
            help="messages per second a client may send (bursts of as many) before it is "
                 "closed with 1008; 0 = no limit (default: %(default)s)")
    _option(lim, "--slow-client", choices=SLOW_CLIENT_POLICIES,
            help="slow-client policy: close it with 1008, or drop messages for it and "
                 "send it a gap notice naming their ids (default: %(default)s); both are counted")
    _option(lim, "--max-header-size", type=_size, metavar="BYTES",
            help="largest HTTP request head; larger → 431 (default: %(size)s)")
    _option(lim, "--ping-interval", type=_seconds, metavar="S",
            help="ping a client silent for this long; 0 disables keepalive (default: %(default)s)")
    _option(lim, "--ping-timeout", type=_seconds, metavar="S",
            help="close (1011) a client that does not answer a ping within this (default: %(default)s)")
    _option(lim, "--handshake-timeout", type=_seconds, metavar="S",
            help="time allowed to send the HTTP request, and for a new Socket.IO polling "
                 "session's first poll (default: %(default)s)")
    _option(lim, "--close-timeout", type=_seconds, metavar="S",
            help="time to wait for the peer during a close (default: %(default)s)")
    scale = p.add_argument_group("scale-out")
    scale.add_argument("--workers", type=int, default=1, metavar="N",
                       help="run N worker processes sharing the port (SO_REUSEPORT), each with its "
                            "own SUB socket and loop, behind an id-stamping forwarder so that a "
                            "client may resume on any worker; the parent restarts crashed workers "
                            "(default: %(default)s)")
    scale.add_argument("--worker-timeout", type=_seconds, default=10.0, metavar="S",
                       help="with --workers: kill (SIGKILL) and restart a worker whose loop has not "
                            "answered for this long; 0 = never (default: %(default)s)")
    _option(scale, "--upstream-ids", action="store_true",
            help="take message ids from upstream: messages are [first part, 8-byte id, "
                 "...] as stamped by 'python -m zmqws.proxy --stamp'")
    ops = p.add_argument_group("operation")
    _option(ops, "--ready-any", action="store_true",
            help="GET /readyz answers 200 once any --sub endpoint is connected "
                 "(default: once every one is)")
    ops.add_argument("--config", metavar="FILE",
                     help="read options from this TOML file (keys: the long option names, e.g. "
                          "port = 8080, sub = [\"tcp://a:5556\"]); options given here override it")
    ops.add_argument("--check", action="store_true",
                     help="check the configuration (options, TLS files, endpoints, the port), "
                          "print 'configuration OK' and exit 0, or the error and exit 1 or 2")
    ops.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                     help="text lines for people, or one JSON object per line (time, level, "
                          "event, client, endpoint...) for log collectors (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="log more (-v: connections, -vv: debug)")
    p.add_argument("--version", action="version", version=f"zmqws {__version__}")
    return p



# -- --config FILE ---------------------------------------------------------------------------


class ConfigError(Exception):
    """A bad ``--config`` file: the message names the file and the key."""


def _load_toml(path: str) -> Dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        raise ConfigError("--config needs Python 3.11+ (tomllib)") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None


def _config_keys(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """Every long option but --help, --version, --config and --check, by name without dashes."""
    return {option[2:]: action for action in parser._actions for option in action.option_strings
            if option.startswith("--") and action.dest not in ("help", "version", "config", "check")}


def _config_scalar(action: argparse.Action, value: Any, where: str) -> Any:
    """One TOML value for an option that takes a value: through the option's ``type`` (so
    "4M" and 4194304 both work for a size), then its ``choices``."""
    if isinstance(value, (bool, dict, list)) or (action.type is None and not isinstance(value, str)):
        raise ConfigError(f"{where}: expected {'a string' if action.type is None else 'a value'} "
                          f"like {action.metavar or action.dest.upper()}, not {value!r}")
    if callable(action.type):
        try:
            value = action.type(str(value))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    """A TOML value as the option's destination holds it."""
    if isinstance(action, argparse._StoreConstAction):  # store_true / store_false
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, not {value!r}")
        return action.const if value else action.default
    if isinstance(action, argparse._CountAction):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: expected a count (0, 1, 2...), not {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_config_scalar(action, item, where) for item in items]
    return _config_scalar(action, value, where)


def _apply_config(parser: argparse.ArgumentParser, argv: Optional[List[str]],
                  path: str) -> argparse.Namespace:
    """Parse ``argv`` again with the file's values as defaults: the command line wins (a
    repeatable option given there replaces the file's list rather than adding to it)."""
    keys = _config_keys(parser)
    defaults: Dict[str, Any] = {}
    lists: Dict[str, List[Any]] = {}
    for key, value in _load_toml(path).items():
        action = keys.get(key.replace("_", "-"))
        if action is None:
            raise ConfigError(f"--config {path}: unknown key {key!r} (keys are the long option "
                              "names, see --help)")
        converted = _config_value(action, value, f"--config {path}: {key}")
        if isinstance(action, argparse._AppendAction):
            lists[action.dest] = converted
            defaults[action.dest] = None  # None after parsing: not given on the command line
        else:
            defaults[action.dest] = converted
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    for dest, items in lists.items():
        if getattr(args, dest) is None:
            setattr(args, dest, items)
    return args


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The options of ``argv`` (and of its ``--config`` file); usage errors exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        try:
            args = _apply_config(parser, argv, args.config)
        except ConfigError as exc:  # the file is at fault, not the usage: no usage text
            fail(str(exc))
            raise SystemExit(2) from None
    if not args.sub_endpoints and not args.demo and not args.rpc_endpoint:
        parser.error("give at least one --sub ENDPOINT (or --rpc ENDPOINT, or --demo)")
    if args.rpc_max_inflight < 1 or args.rpc_timeout <= 0:
        parser.error("--rpc-max-inflight must be at least 1 and --rpc-timeout more than 0")
    if args.rpc_endpoint and args.bind and args.workers > 1:
        parser.error("--rpc with --bind and --workers: the workers cannot all bind one endpoint; "
                     "let the application bind its ROUTER and the workers connect")
    if args.push_endpoint and args.pub_endpoint:
        parser.error("give --push or --pub, not both")
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not args.sio_path.startswith("/"):
        parser.error("--sio-path must start with /")
    if args.sio_ping_interval <= 0 or args.sio_ping_timeout <= 0:
        parser.error("--sio-ping-interval and --sio-ping-timeout must be more than 0")
    return args


# -- arguments -> the config ---------------------------------------------------------------------


def _token(args: argparse.Namespace) -> Optional[str]:
    """The shared client token: ``--token``, else the ZMQWS_TOKEN environment variable."""
    return args.token or os.environ.get("ZMQWS_TOKEN")


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    """The config the parsed arguments describe: each flag of a config field by its name
    (see :func:`_option`), then what needs converting: text to bytes, the TLS files to an SSL
    context, the tokens to the ``authenticate`` hook.  Raises ValueError naming the flag at
    fault (a TLS file, ``--static-dir``); the config's own checks raise ValueError too."""
    if args.static_dir and not os.path.isdir(args.static_dir):
        raise ValueError(f"--static-dir {args.static_dir}: "
                         + ("not a folder" if os.path.exists(args.static_dir) else "no such folder"))
    token = _token(args)
    given = vars(args)
    options: Dict[str, Any] = {name: given[name] for name in option_names() if name in given}
    options.update(
        bind=args.bind and not args.demo,  # the demo publisher binds; the SUB socket connects
        separator=args.separator.encode("utf-8"),
        upstream_topic=args.upstream_topic.encode("utf-8"),
        ssl_context=checked_server_context(args.certfile, args.keyfile) if args.certfile else None,
        authenticate=authenticator(token, args.token_file),
        metrics_token=args.metrics_token or os.environ.get("ZMQWS_METRICS_TOKEN") or token)
    return GatewayConfig().replace(**options)


def _worker_options(args: argparse.Namespace) -> WorkerOptions:
    """What ``--workers`` needs besides the config (each worker rebuilds its TLS context and
    its token hook from these: neither can be sent to a spawned process)."""
    return WorkerOptions(workers=args.workers, worker_timeout=args.worker_timeout,
                         verbose=args.verbose, log_format=args.log_format, certfile=args.certfile,
                         keyfile=args.keyfile, token=_token(args), token_file=args.token_file)


# -- running -------------------------------------------------------------------------------------


def check(config: GatewayConfig) -> int:
    """``--check``: build the gateway and start it (TLS files loaded, endpoints bound or
    connected, the port listened on), stop it at once; "configuration OK" and 0, or the
    error line and 1.  The demo publisher is not started."""
    from .gateway import Gateway

    try:
        gateway = Gateway.from_config(config)
    except ValueError as exc:
        return fail(str(exc))
    level = log.level
    log.setLevel(logging.ERROR)  # nothing about connections that live for a millisecond
    try:
        gateway.start()
    except (OSError, ValueError) as exc:
        return fail(start_error(config, exc))
    finally:
        gateway.stop(timeout=0)
        log.setLevel(level)
    print("zmqws: configuration OK", flush=True)
    return 0


def _run(args: argparse.Namespace, config: GatewayConfig, demo_endpoint: Optional[str]) -> int:
    """Serve ``config`` (with the demo publisher's endpoint, if any) in this process, or in
    ``--workers`` processes; the exit status."""
    from .gateway import Gateway

    if demo_endpoint is not None:
        config = config.replace(sub_endpoints=config.upstream.sub_endpoints + (demo_endpoint,))
    try:
        gateway = Gateway.from_config(config)  # with --workers: the settings checked here, once
    except ValueError as exc:
        return fail(str(exc))
    if args.workers > 1:
        return Supervisor(config, _worker_options(args)).run()
    return serve(gateway, config, demo=demo_endpoint is not None)


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; the exit status (2 for usage and ``--config`` errors, 1 for others)."""
    args = parse_args(argv)
    setup_logging(args.verbose, args.log_format)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        return fail(str(exc))
    if args.check:
        return check(config)
    if not args.demo:
        return _run(args, config, None)
    from .demo import DemoApplication, DemoPublisher

    demo = DemoPublisher().start()
    app = None if config.upstream.rpc_endpoint else DemoApplication().start()
    try:
        if app is not None:
            config = config.replace(rpc_endpoint=app.endpoint)
        return _run(args, config, demo.endpoint)
    finally:
        if app is not None:
            app.stop()
        demo.stop()
