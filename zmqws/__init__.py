"""zmqws: a ZeroMQ → WebSocket gateway and a small, vendorable WebSocket server.

    import zmqws
    zmqws.Gateway("tcp://127.0.0.1:5556", 8080).run()

Runtime dependencies: the Python standard library and pyzmq.
"""

from typing import Any

from .peer import Client
from .server import WebSocketServer
from .stats import Stats

__version__ = "0.1.0"

__all__ = ["Gateway", "WebSocketServer", "Client", "Stats", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Gateway":  # imported lazily so the plain server does not need zmq's SUB side
        from .gateway import Gateway
        return Gateway
    raise AttributeError(name)
