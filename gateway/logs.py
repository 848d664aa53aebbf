"""Logging setup: one JSON object per line, or plain text for a terminal."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from gateway.settings import LogSettings

# Control characters as escapes, so that no value (a path, a model name) can start a
# line of its own in a text log.
CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(32), 127)} | {
    10: "\\n",
    13: "\\r",
    9: "\\t",
}


def text_field(value: object) -> str:
    """VALUE for a `key=value` text line: quoted and escaped unless it is one plain word."""
    text = str(value)
    if text.isprintable() and " " not in text and '"' not in text and text:
        return text
    return json.dumps(text)


class TextFormatter(logging.Formatter):
    """Plain lines, each record on one line whatever its arguments hold."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(CONTROL_ESCAPES)
        return super().formatMessage(record)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


def configure_logging(settings: LogSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JSONFormatter()
        if settings.format == "json"
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())
    # uvicorn's own loggers propagate to ours, so every line has one format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
    # SkyPilot's SDK (discovery) brings alembic, which logs its plugins at INFO on import.
    logging.getLogger("alembic").setLevel(logging.WARNING)
