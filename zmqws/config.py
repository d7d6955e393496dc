"""The configuration: one frozen dataclass per room, every default in one place.

``Gateway(sub, port, **options)`` and ``WebSocketServer(port, **options)``
take the options by their flat names (``max_queue=...``, ``sio_path=...``);
:meth:`GatewayConfig.of` sorts them into the rooms' configs and refuses an
unknown name.  The command line (:mod:`zmqws.cli`) builds the same config
from its flags and file; ``--workers`` hands it to each worker process.

Each room reads only its own part: :class:`ServerConfig` (connections, HTTP,
WebSocket, limits), :class:`HubConfig` (ids, history, topics, rights caps,
rates), :class:`UpstreamConfig` (the ZeroMQ sockets), :class:`TransportConfig`
(what clients see: envelopes, SSE, long-poll, Socket.IO) and
:class:`HttpConfig` (files, ``/metrics``, ``/readyz``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Type, Union

from .rights import DEFAULT_MAX_TOPIC_LENGTH, DEFAULT_MAX_TOPICS

if TYPE_CHECKING:  # pragma: no cover
    import ssl

__all__ = ["ServerConfig", "HubConfig", "UpstreamConfig", "TransportConfig", "HttpConfig", "GatewayConfig",
           "PAYLOAD_MODES", "ENVELOPES", "SLOW_CLIENT_POLICIES"]

PAYLOAD_MODES = ("auto", "text", "binary")
ENVELOPES = ("payload", "topic", "json")
SLOW_CLIENT_POLICIES = ("close", "drop")
RETRY_LOG_INTERVAL = 60.0  # seconds between two "still not connected" lines of one endpoint

def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


@dataclass(frozen=True)
class ServerConfig:
    """The WebSocket server: listening, limits, timeouts, compression, access (see
    :class:`~zmqws.server.WebSocketServer` for what each one does)."""

    host: str = "127.0.0.1"
    port: int = 8080
    subprotocols: Tuple[str, ...] = ()
    max_message_size: int = 1 << 20
    max_fragments: int = 4096
    max_header_size: int = 8192
    max_queue: int = 4 << 20
    slow_client: str = "close"
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    handshake_timeout: float = 10.0
    close_timeout: float = 3.0
    backlog: int = 1024
    reuse_port: bool = False
    ssl_context: Optional["ssl.SSLContext"] = None
    max_connections: int = 10000
    max_connections_per_address: int = 0
    max_requests_per_connection: int = 1000
    idle_timeout: float = 0.0
    allow_origins: Tuple[str, ...] = ()
    allow_hosts: Tuple[str, ...] = ()
    authenticate: Optional[Callable[..., Any]] = None
    deflate: bool = True
    deflate_threshold: int = 128
    deflate_level: int = 6
    deflate_mem_level: int = 8
    deflate_max_window_bits: int = 15

    def __post_init__(self) -> None:
        _choice("slow_client", self.slow_client, SLOW_CLIENT_POLICIES)


@dataclass(frozen=True)
class HubConfig:
    """Ids, history, topics and their caps, client message rates (:mod:`zmqws.hub`)."""

    payload_mode: str = "auto"
    max_topics: int = DEFAULT_MAX_TOPICS
    max_topic_length: int = DEFAULT_MAX_TOPIC_LENGTH
    max_upstream_prefixes: int = 10_000
    subscribe_all: bool = False
    linger: float = 10.0
    history: int = 1000
    history_bytes: int = 16 << 20
    client_rate: float = 100.0
    upstream_ids: bool = False
    first_id: Optional[int] = None
    flush_interval_ms: float = 0.0  # > 0: a turn's messages wait for the interval (coalesced writes)

    def __post_init__(self) -> None:
        _choice("payload_mode", self.payload_mode, PAYLOAD_MODES)
        if not 0 <= self.flush_interval_ms <= 1000:
            raise ValueError(f"flush_interval_ms must be within 0..1000, not {self.flush_interval_ms!r}")


@dataclass(frozen=True)
class UpstreamConfig:
    """The ZeroMQ side (:mod:`zmqws.upstream`, and the two-way channel: :mod:`zmqws.rpc`)."""

    sub_endpoints: Tuple[str, ...] = ()
    bind: bool = False
    push_endpoint: Optional[str] = None
    pub_endpoint: Optional[str] = None
    upstream_topic: bytes = b"ws"
    upstream_hwm: int = 10_000
    rcvhwm: int = 100_000
    drain_budget: int = 4096
    ready_any: bool = False
    upstream_log_interval: float = RETRY_LOG_INTERVAL
    upstream_status_file: Optional[str] = None
    rpc_endpoint: Optional[str] = None  # the two-way DEALER (zmqws.rpc)
    rpc_max_inflight: int = 32
    rpc_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.push_endpoint and self.pub_endpoint:
            raise ValueError("give push_endpoint or pub_endpoint, not both")
        if self.rpc_max_inflight < 1 or self.rpc_timeout <= 0:
            raise ValueError("rpc_max_inflight must be at least 1 and rpc_timeout more than 0")


@dataclass(frozen=True)
class TransportConfig:
    """What clients see on each transport (:mod:`zmqws.transports`)."""

    envelope: str = "payload"
    separator: bytes = b" "
    require_topic: bool = False
    sse_heartbeat: float = 15.0
    poll_timeout: float = 25.0
    poll_max_messages: int = 100
    poll_max_bytes: int = 1 << 20
    poll_coalesce_ms: float = 100.0  # at most one answer with messages per interval to a poller (leading edge)
    socketio: bool = True
    sio_path: str = "/socket.io/"
    sio_event: str = "message"
    sio_ping_interval: float = 25.0
    sio_ping_timeout: float = 20.0
    sio_recovery_seconds: float = 120.0
    sio_recovery: bool = True
    sio_namespaces: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _choice("envelope", self.envelope, ENVELOPES)
        if not 0 <= self.poll_coalesce_ms <= 1000:
            raise ValueError(f"poll_coalesce_ms must be within 0..1000, not {self.poll_coalesce_ms!r}")
        for name in self.sio_namespaces:
            if not name.strip("/") or "," in name or "?" in name:
                raise ValueError(f"sio_namespaces: {name!r} is not a namespace name (like /chat)")


@dataclass(frozen=True)
class HttpConfig:
    """The plain HTTP endpoints (:mod:`zmqws.httpapp`)."""

    page: Optional[str] = "index.html"
    static_dir: Optional[str] = None
    max_static_size: int = 16 << 20
    static_cache_size: int = 64 << 20
    cors_origins: Tuple[str, ...] = ()
    metrics: bool = True
    metrics_token: Optional[str] = None
    stats_dir: Optional[str] = None


_ROOMS: Dict[str, Type[Any]] = {"server": ServerConfig, "hub": HubConfig, "upstream": UpstreamConfig,
                                "transports": TransportConfig, "http": HttpConfig}
_SEQUENCES = {"subprotocols", "allow_origins", "allow_hosts", "sub_endpoints", "cors_origins", "sio_namespaces"}


def _room_of() -> Dict[str, str]:
    owner: Dict[str, str] = {}
    for room, cls in _ROOMS.items():
        for f in dataclasses.fields(cls):
            assert f.name not in owner, f"option {f.name} in two rooms"
            owner[f.name] = room
    return owner


_OWNER = _room_of()


def option_names() -> Tuple[str, ...]:
    """Every option ``Gateway`` takes by name."""
    return tuple(_OWNER)


def default(name: str) -> Any:
    """The default of an option (the command line shows and uses these)."""
    cls = _ROOMS[_OWNER[name]]
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _split(options: Mapping[str, Any], rooms: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    parts: Dict[str, Dict[str, Any]] = {room: {} for room in rooms}
    for name, value in options.items():
        room = _OWNER.get(name)
        if room not in parts:
            raise TypeError(f"unknown option {name!r}")
        if name in _SEQUENCES and value is not None:
            value = (value,) if isinstance(value, str) else tuple(value)
        parts[room][name] = value
    return parts


def server_config(options: Mapping[str, Any]) -> ServerConfig:
    """A :class:`ServerConfig` from flat options (a plain ``WebSocketServer``)."""
    return ServerConfig(**_split(options, ("server",))["server"])


@dataclass(frozen=True)
class GatewayConfig:
    """Everything a gateway is built from: one config per room."""

    server: ServerConfig = field(default_factory=ServerConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    transports: TransportConfig = field(default_factory=TransportConfig)
    http: HttpConfig = field(default_factory=HttpConfig)

    @classmethod
    def of(cls, sub_endpoint: Union[str, Sequence[str], None] = None, port: int = 8080,
           **options: Any) -> "GatewayConfig":
        """The config of ``Gateway(sub_endpoint, port, **options)`` (flat option names)."""
        options["sub_endpoints"] = () if sub_endpoint is None else sub_endpoint
        options["port"] = port
        parts = _split(options, tuple(_ROOMS))
        return cls(**{room: _ROOMS[room](**values) for room, values in parts.items()})

    def options(self) -> Dict[str, Any]:
        """The flat options (``sub_endpoints`` and ``port`` among them)."""
        return {f.name: getattr(getattr(self, room), f.name)
                for room, cls in _ROOMS.items() for f in dataclasses.fields(cls)}

    def replace(self, **options: Any) -> "GatewayConfig":
        """A copy with some flat options changed (``--workers`` sets each worker's)."""
        parts = _split(options, tuple(_ROOMS))
        return dataclasses.replace(self, **{room: dataclasses.replace(getattr(self, room), **values)
                                            for room, values in parts.items() if values})
