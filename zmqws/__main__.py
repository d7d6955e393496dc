"""The command line: ``python -m zmqws --sub ENDPOINT --port N`` (console script ``zmqws``).

Also: ``--config FILE`` (TOML, keys = the long option names), ``--check``
(validate everything, then exit), ``--log-format text|json``.  Every start-up
error is one line, ``zmqws: error: --FLAG VALUE: what is wrong``.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import signal
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from . import __version__

if TYPE_CHECKING:  # pragma: no cover
    import ssl

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
                          "and /zmqws.js); nothing outside it, and no dotfile, is ever served")
    web.add_argument("--max-static-size", type=_size, default=16 << 20, metavar="BYTES",
                     help="largest file served; larger ones are 404 (default: 16M)")
    web.add_argument("--static-cache-size", type=_size, default=64 << 20, metavar="BYTES",
                     help="files are served from memory: at most this many bytes of them (default: 64M)")
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
    sec.add_argument("--allow-host", action="append", default=[], metavar="NAME",
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
    sec.add_argument("--metrics-token", metavar="TOKEN",
                     help="require this token (Bearer header or ?token=) for GET /metrics, and only "
                          "this one; default: the --token, if any (env ZMQWS_METRICS_TOKEN)")
    sec.add_argument("--no-metrics", action="store_true", help="do not serve GET /metrics")
    lim = p.add_argument_group("limits and timeouts")
    lim.add_argument("--max-connections", type=int, default=10000, metavar="N",
                     help="connections at most, Socket.IO polling sessions included; beyond, new "
                          "ones get 503 (default: %(default)s)")
    lim.add_argument("--max-connections-per-address", type=int, default=0, metavar="N",
                     help="connections at most from one client IP address, Socket.IO polling sessions "
                          "included; 0 = no limit (default; "
                          "behind a reverse proxy every client has the proxy's address)")
    lim.add_argument("--max-topics", type=int, default=256, metavar="N",
                     help="topic prefixes one client may have at most; more → 400 or an error "
                          "answer (default: %(default)s)")
    lim.add_argument("--max-topic-length", type=_size, default=256, metavar="BYTES",
                     help="longest topic prefix a client may ask for (default: %(default)s)")
    lim.add_argument("--max-upstream-prefixes", type=int, default=10_000, metavar="N",
                     help="distinct prefixes the SUB socket subscribes to at most; a client that "
                          "would add one more is refused (503); 0 = no limit (default: %(default)s)")
    lim.add_argument("--max-requests-per-connection", type=int, default=1000, metavar="N",
                     help="HTTP requests answered on one keep-alive connection; the last response "
                          "says 'Connection: close'; 0 = no limit (default: %(default)s)")
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
                     help="time allowed to send the HTTP request, and for a new Socket.IO polling "
                          "session's first poll (default: %(default)s)")
    lim.add_argument("--close-timeout", type=_seconds, default=3.0, metavar="S",
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
    scale.add_argument("--upstream-ids", action="store_true",
                       help="take message ids from upstream: messages are [first part, 8-byte id, "
                            "...] as stamped by 'python -m zmqws.proxy --stamp'")
    ops = p.add_argument_group("operation")
    ops.add_argument("--ready-any", action="store_true",
                     help="GET /readyz answers 200 once any --sub endpoint is connected "
                          "(default: once every one is)")
    ops.add_argument("--config", metavar="FILE",
                     help="read options from this TOML file (keys: the long option names, e.g. "
                          "port = 8080, sub = [\"tcp://a:5556\"]); options given here override it")
    ops.add_argument("--check", action="store_true",
                     help="check the configuration (options, TLS files, endpoints, the port), "
                          "print 'configuration OK' and exit 0, or the error and exit 1 or 2")
    ops.add_argument("--log-format", choices=("text", "json"), default="text",
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
            _fail(str(exc))
            raise SystemExit(2) from None
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
    return args


# -- logging --------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``event`` (the message)
    and the fields a log call passes with ``extra=`` (client, endpoint, code...)."""

    FIELDS = ("client", "addr", "transport", "path", "code", "reason", "endpoint")

    def format(self, record: logging.LogRecord) -> str:
        doc: Dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
                            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "event": record.getMessage(),
        }
        for field in self.FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                doc[field] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def _setup_logging(verbose: int, log_format: str = "text") -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    log.setLevel(min(level, logging.INFO))  # startup lines are always shown


# -- errors that say what to fix ---------------------------------------------------------------


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----")
_PEM_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")


def _read_pem(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror or exc}") from None


def _tls_context(certfile: str, keyfile: Optional[str]) -> "ssl.SSLContext":
    """The server's SSL context, each file opened and checked first so that an error names
    the flag and the file: missing, unreadable, not PEM, encrypted, or a key that does not
    match the certificate."""
    import ssl
    from .tls import server_context

    cert = _read_pem("--certfile", certfile)
    if not _PEM_CERT.search(cert):
        raise ValueError(f"--certfile {certfile}: not a PEM certificate "
                         "(no -----BEGIN CERTIFICATE----- line)")
    key_flag, key_path = ("--keyfile", keyfile) if keyfile else ("--certfile", certfile)
    key = _read_pem("--keyfile", keyfile) if keyfile else cert
    if not _PEM_KEY.search(key):
        raise ValueError(f"--keyfile {keyfile}: not a PEM private key" if keyfile else
                         f"--certfile {certfile}: holds no private key; give it with --keyfile")
    if b"ENCRYPTED" in key:
        raise ValueError(f"{key_flag} {key_path}: the private key is encrypted (passphrases are "
                         "not supported: decrypt it, e.g. openssl pkey -in KEY -out KEY2)")
    try:
        return server_context(certfile, keyfile)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"{key_flag} {key_path}: the private key does not match the "
                             f"certificate of --certfile {certfile}") from None
        raise ValueError(f"--certfile {certfile}: {exc.reason or exc}") from None
    except OSError as exc:
        raise ValueError(f"--certfile {certfile}: {exc.strerror or exc}") from None


_LISTEN_REASONS = {
    errno.EADDRINUSE: ("--port", "address already in use"),
    errno.EACCES: ("--port", "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"),
    errno.EADDRNOTAVAIL: ("--host", "cannot assign requested address (not an address of this machine)"),
}


def listen_error(host: str, port: int, exc: OSError) -> str:
    """The one line for a port that cannot be listened on, naming the flag at fault."""
    known = _LISTEN_REASONS.get(exc.errno or 0)
    if known is not None:
        flag, reason = known
        return f"{flag} {port if flag == '--port' else host}: {reason}"
    detail = (exc.strerror or str(exc)).rsplit(": ", 1)[-1]  # the server's text ends with it
    if exc.errno is not None and exc.errno < 0:  # from getaddrinfo: the host name
        return f"--host {host}: unknown host name ({detail})"
    return f"--host {host} --port {port}: {detail[:1].lower() + detail[1:]}"


def _start_error(args: argparse.Namespace, exc: Exception) -> str:
    """The one line for an error from ``Gateway.start()``, naming the flag."""
    from .gateway import EndpointError

    if isinstance(exc, EndpointError):
        flag = {"SUB": "--sub", "PUSH": "--push", "PUB": "--pub"}[exc.kind]
        return f"{flag} {exc.endpoint}: {exc.reason}{' (with --bind)' if args.bind else ''}"
    if isinstance(exc, OSError):  # the listening socket is the only OSError start() raises
        return listen_error(args.host, args.port, exc)
    return str(exc)


def _fail(message: str) -> int:
    print(f"zmqws: error: {message}", file=sys.stderr, flush=True)
    return 1


def build_gateway(args: argparse.Namespace, endpoints: List[str], **overrides: Any) -> "Gateway":
    """The Gateway the parsed arguments describe (raises ValueError naming the flag at fault)."""
    from .gateway import Gateway

    ssl_context = _tls_context(args.certfile, args.keyfile) if args.certfile else None
    if args.static_dir and not os.path.isdir(args.static_dir):
        raise ValueError(f"--static-dir {args.static_dir}: "
                         + ("not a folder" if os.path.exists(args.static_dir) else "no such folder"))
    token = args.token or os.environ.get("ZMQWS_TOKEN")
    authenticate = None
    if args.token_file:
        from .auth import TokenFileAuthenticator
        from .rights import TokenFile
        authenticate = TokenFileAuthenticator(TokenFile(args.token_file), token)
    elif token:
        from .auth import token_authenticator
        authenticate = token_authenticator(token)
    options: Dict[str, Any] = dict(
        host=args.host, bind=args.bind and not args.demo,
        payload_mode=args.payload, rcvhwm=args.rcvhwm, subprotocols=args.subprotocol,
        envelope=args.format, separator=args.separator.encode("utf-8"),
        require_topic=args.require_topic, max_topics=args.max_topics,
        max_topic_length=args.max_topic_length, max_upstream_prefixes=args.max_upstream_prefixes,
        subscribe_all=args.subscribe_all, linger=args.linger,
        history=args.history, history_bytes=args.history_bytes,
        push_endpoint=args.push, pub_endpoint=args.pub,
        upstream_topic=args.upstream_topic.encode("utf-8"), client_rate=args.client_rate,
        deflate=not args.no_deflate, deflate_threshold=args.deflate_threshold,
        deflate_mem_level=args.deflate_mem_level, static_dir=args.static_dir,
        max_static_size=args.max_static_size, static_cache_size=args.static_cache_size,
        cors_origins=args.cors_origin, sse_heartbeat=args.sse_heartbeat,
        poll_timeout=args.poll_timeout, ssl_context=ssl_context,
        allow_origins=args.allow_origin, allow_hosts=args.allow_host, authenticate=authenticate, metrics=not args.no_metrics,
        metrics_token=args.metrics_token or os.environ.get("ZMQWS_METRICS_TOKEN") or token,
        upstream_ids=args.upstream_ids,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
        max_requests_per_connection=args.max_requests_per_connection,
        max_fragments=args.max_fragments, idle_timeout=args.idle_timeout,
        max_message_size=args.max_message_size, max_queue=args.max_queue,
        slow_client=args.slow_client, max_header_size=args.max_header_size,
        ping_interval=args.ping_interval, ping_timeout=args.ping_timeout,
        handshake_timeout=args.handshake_timeout, close_timeout=args.close_timeout,
        socketio=not args.no_socketio, sio_path=args.sio_path, sio_event=args.sio_event,
        sio_ping_interval=args.sio_ping_interval, sio_ping_timeout=args.sio_ping_timeout,
        ready_any=args.ready_any)
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
        return _fail(_start_error(args, exc))
    started = time.monotonic()

    def on_signal(signum, frame):  # noqa: ARG001
        # One graceful stop: a second SIGTERM (systemd's KillMode=control-group signals every
        # process, and a --workers parent forwards its own) must not cut it short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    try:  # from here on, a signal (even before run() waits) means a graceful stop
        signal.signal(signal.SIGTERM, on_signal)
        tokens = getattr(gateway.authenticate, "tokens", None)
        if tokens is not None and hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: tokens.reload())
        shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
        ws_scheme, http_scheme = ("wss", "https") if gateway.ssl_context else ("ws", "http")
        log.info("zmqws %s listening on %s://%s:%d/ (page: %s://%s:%d/), SUB %s %s",
                 __version__, ws_scheme, args.host, gateway.port, http_scheme, shown_host, gateway.port,
                 "bound to" if gateway.bind else "connecting to", ", ".join(endpoints))
        if args.demo and demo is not None:
            print(f"zmqws demo: open {http_scheme}://{shown_host}:{gateway.port}/ in a browser "
                  "(Ctrl-C to stop)", flush=True)
        gateway.run()
    except KeyboardInterrupt:
        gateway.stop()
    finally:
        if demo is not None:
            demo.stop()
    log.info("stopped after %s: %s", _duration(time.monotonic() - started),
             _summary(gateway.stats) or "nothing served")
    return 0


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _summary(stats: Any) -> str:
    """The counters an operator reads first, the non-zero ones only (all are at /metrics)."""
    counts = [
        ("connections", stats.connections),
        ("messages in", stats.zmq_messages),
        ("deliveries", stats.messages_out),
        ("client messages", stats.messages_in),
        ("drops", stats.drops + stats.upstream_drops),
        ("upstream gaps", stats.upstream_gaps),
        ("errors", stats.http_errors + stats.protocol_errors + stats.tls_errors
         + stats.accept_errors + stats.malformed),
    ]
    return ", ".join(f"{name} {count}" for name, count in counts if count)


def check(args: argparse.Namespace) -> int:
    """``--check``: build the gateway and start it (TLS files loaded, endpoints bound or
    connected, the port listened on), stop it at once; "configuration OK" and 0, or the
    error line and 1.  The demo publisher is not started."""
    try:
        gateway = build_gateway(args, list(args.sub))
    except ValueError as exc:
        return _fail(str(exc))
    level = log.level
    log.setLevel(logging.ERROR)  # nothing about connections that live for a millisecond
    try:
        gateway.start()
    except (OSError, ValueError) as exc:
        return _fail(_start_error(args, exc))
    finally:
        gateway.stop(timeout=0)
        log.setLevel(level)
    print("zmqws: configuration OK", flush=True)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    _setup_logging(args.verbose, args.log_format)
    if args.check:
        return check(args)
    demo = None
    endpoints = list(args.sub)
    if args.demo:
        from .demo import DemoPublisher
        demo = DemoPublisher().start()
        endpoints.append(demo.endpoint)
    try:
        gateway = build_gateway(args, endpoints)  # with --workers: the settings checked here, once
    except ValueError as exc:
        if demo is not None:
            demo.stop()
        return _fail(str(exc))
    if args.workers > 1:
        from .workers import Supervisor
        try:
            return Supervisor(args, endpoints).run()
        finally:
            if demo is not None:
                demo.stop()
    return serve(gateway, args, endpoints, demo)


if __name__ == "__main__":
    sys.exit(main())
