"""Logging set-up of a zmqws process (the command line and each ``--workers`` worker).

``--log-format text`` writes lines for people; ``--log-format json`` one JSON
object per line for log collectors (:class:`JsonFormatter`).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, Dict

__all__ = ["JsonFormatter", "setup_logging", "LOG_FORMATS"]

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


def setup_logging(verbose: int, log_format: str = "text") -> None:
    """The root handler on stderr: warnings (``verbose`` 0), info (1) or debug (2+); the
    ``zmqws`` logger shows its start and stop lines at every level."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("zmqws").setLevel(min(level, logging.INFO))  # startup lines are always shown
