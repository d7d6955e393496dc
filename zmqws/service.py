"""One gateway as a service process: start it, say where it listens, run until SIGTERM or
SIGINT, stop gracefully, say what it served.  The command line (:mod:`zmqws.cli`) and each
``--workers`` worker (:mod:`zmqws.workers`) run their gateway through :func:`serve`.

Every start-up error is one line, ``zmqws: error: --FLAG VALUE: what is wrong``.
"""

from __future__ import annotations

import errno
import logging
import signal
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING, Any, Optional

from . import __version__
from .config import GatewayConfig

if TYPE_CHECKING:  # pragma: no cover
    from .gateway import Gateway

__all__ = ["serve", "fail", "listen_error", "start_error"]

log = logging.getLogger("zmqws.service")

_LISTEN_REASONS = {
    errno.EADDRINUSE: ("--port", "address already in use"),
    errno.EACCES: ("--port", "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"),
    errno.EADDRNOTAVAIL: ("--host", "cannot assign requested address (not an address of this machine)"),
}


def fail(message: str) -> int:
    """Print the one error line on stderr; the exit status 1."""
    print(f"zmqws: error: {message}", file=sys.stderr, flush=True)
    return 1


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


def start_error(config: GatewayConfig, exc: Exception) -> str:
    """The one line for an error from ``Gateway.start()``, naming the flag."""
    from .gateway import EndpointError

    if isinstance(exc, EndpointError):
        flag = {"SUB": "--sub", "PUSH": "--push", "PUB": "--pub", "RPC": "--rpc"}[exc.kind]
        return f"{flag} {exc.endpoint}: {exc.reason}{' (with --bind)' if config.upstream.bind else ''}"
    if isinstance(exc, OSError):  # the listening socket is the only OSError start() raises
        return listen_error(config.server.host, config.server.port, exc)
    return str(exc)


def serve(gateway: "Gateway", config: GatewayConfig, demo: bool = False) -> int:
    """Start ``gateway`` (built from ``config``), log where it listens, run until
    SIGINT/SIGTERM; the exit status.  SIGHUP reloads a ``--token-file``."""
    try:
        gateway.start()
    except (OSError, ValueError) as exc:
        return fail(start_error(config, exc))
    started = time.monotonic()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:  # noqa: ARG001
        # One graceful stop: a second SIGTERM (systemd's KillMode=control-group signals every
        # process, and a --workers parent forwards its own) must not cut it short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    try:  # from here on, a signal (even before run() waits) means a graceful stop
        signal.signal(signal.SIGTERM, on_signal)
        tokens = getattr(config.server.authenticate, "tokens", None)
        if tokens is not None and hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: tokens.reload())
        host = config.server.host
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        ws_scheme, http_scheme = ("wss", "https") if config.server.ssl_context else ("ws", "http")
        upstream = config.upstream
        verb = "bound to" if upstream.bind else "connecting to"
        sockets = [f"SUB {verb} {', '.join(upstream.sub_endpoints)}"] if upstream.sub_endpoints else []
        if upstream.rpc_endpoint:
            sockets.append(f"RPC {verb} {upstream.rpc_endpoint}")
        log.info("zmqws %s listening on %s://%s:%d/ (page: %s://%s:%d/), %s",
                 __version__, ws_scheme, host, gateway.port, http_scheme, shown_host, gateway.port,
                 ", ".join(sockets))
        if demo:
            print(f"zmqws demo: open {http_scheme}://{shown_host}:{gateway.port}/ in a browser "
                  "(Ctrl-C to stop)", flush=True)
        gateway.run()
    except KeyboardInterrupt:
        gateway.stop()
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
