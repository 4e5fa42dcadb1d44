"""Logging: one line per event to stdout, text or JSON, at the level IoT Edge sets.

`EDGECERT_LOG_FORMAT=json` gives one JSON object per line ({"time", "level", "logger", "message",
...extra fields}); anything else gives text. `RuntimeLogLevel` (set by IoT Edge: debug, info,
warning, error; also Information/Warning as the .NET modules spell them) sets the level. The SDKs'
own loggers stay at WARNING: their debug output can carry connection details. Messages never hold
key material or tokens: the agent logs what it decided and the error codes, not what it read.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import TextIO

__all__ = ["configure_logging", "level_from"]

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "verbose": logging.DEBUG,
    "info": logging.INFO,
    "information": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
}
_QUIET = ("azure", "paho", "urllib3", "msal", "aiohttp.access")


def level_from(value: str | None) -> int:
    """The logging level for a RuntimeLogLevel value (INFO when unset or unknown)."""
    return _LEVELS.get((value or "info").strip().lower(), logging.INFO)


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(getattr(record, "fields", {}))
        return json.dumps(data)


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        return f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}" + (f" {fields}" if fields else "")


def configure_logging(stream: TextIO | None = None) -> None:
    """Set up the `edgecert` loggers from the environment."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(_Json() if os.environ.get("EDGECERT_LOG_FORMAT", "").lower() == "json" else _Text())
    root = logging.getLogger("edgecert")
    root.handlers[:] = [handler]
    root.setLevel(level_from(os.environ.get("RuntimeLogLevel")))  # noqa: SIM112 - the name IoT Edge sets
    root.propagate = False
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
