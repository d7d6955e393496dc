"""Logging set-up of a zmqws process (the command line and each ``--workers`` worker).

``--log-format text`` writes lines for people; ``--log-format json`` one JSON
object per line for log collectors (:class:`JsonFormatter`).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, Dict, Optional, Tuple

__all__ = ["JsonFormatter", "LogLimiter", "setup_logging", "LOG_FORMATS"]

LOG_FORMATS = ("text", "json")


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


#: Loggers whose information lines are shown at every verbosity: the start and stop
#: lines (``zmqws.service``) and the upstream endpoints' state (``zmqws.upstream``).
ALWAYS_INFO = ("zmqws.service", "zmqws.upstream")


def setup_logging(verbose: int, log_format: str = "text") -> None:
    """The root handler on stderr: warnings (``verbose`` 0), info (1: connections, policy
    decisions) or debug (2+); start, stop and upstream lines at every level."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("zmqws").setLevel(level)
    for name in ALWAYS_INFO:
        logging.getLogger(name).setLevel(min(level, logging.INFO))


class LogLimiter:
    """At most one line of each kind every ``interval`` seconds, saying how many it held back:
    what a client can make the gateway log is bounded like everything else it can make it do."""

    __slots__ = ("logger", "interval", "_marks")

    def __init__(self, logger: logging.Logger, interval: float = 5.0) -> None:
        self.logger = logger
        self.interval = interval
        self._marks: Dict[str, Tuple[float, int]] = {}  # kind -> (last line, lines held back)

    def log(self, level: int, kind: str, message: str, *args: Any,
            extra: Optional[Dict[str, Any]] = None) -> None:
        now = time.monotonic()
        last, held = self._marks.get(kind, (-self.interval, 0))
        if now - last < self.interval:
            self._marks[kind] = (last, held + 1)
            return
        self._marks[kind] = (now, 0)
        if held:
            message += " (and %d more like it since the last line)"
            args += (held,)
        self.logger.log(level, message, *args, extra=extra)
