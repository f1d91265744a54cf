"""One log format for the whole gateway: Granian's own lines and the gateway's.

``text`` (the default) is one line per record, with its time, for a person at a terminal;
``json`` is one object per line for a log collector. The main process and every worker
use the same configuration (:func:`config`), so a terminal shows one format throughout.
"""

from __future__ import annotations

import json
import logging
from typing import Any

__all__ = ("JsonFormatter", "config", "configure")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, TIME_FORMAT),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def config(level: str, fmt: str = "text") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for `level` and format `fmt` (``text``, ``json``);
    Granian takes it as its ``log_dictconfig``."""
    formatter: dict[str, Any] = (
        {"()": "proxy.logs.JsonFormatter"}
        if fmt == "json"
        else {"()": "logging.Formatter", "fmt": TEXT_FORMAT, "datefmt": TIME_FORMAT}
    )
    handler = {"formatter": "line", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    quiet = {"handlers": ["console"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": formatter},
        "handlers": {"console": handler},
        "loggers": {"_granian": dict(quiet), "granian.access": dict(quiet), "proxy": dict(quiet)},
        "root": {"handlers": ["console"], "level": "WARNING"},
    }


def configure(level: str, fmt: str = "text") -> None:
    """Apply :func:`config` in this process."""
    import logging.config  # noqa: PLC0415 - once, at start

    logging.config.dictConfig(config(level, fmt))
