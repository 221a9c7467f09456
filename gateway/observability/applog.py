"""Application logs on stderr: human-readable text (default) or one JSON object per line.

JSON lines suit log collectors (Loki, CloudWatch, Elastic) that would otherwise split a traceback
into many records. The access and audit logs are separate sinks (``jsonlog``) and always JSON.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import orjson

FORMATS = ("text", "json")
ENV = "GATEWAY_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"}``, plus ``exc`` (the formatted traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


def log_format(chosen: str | None) -> str:
    """The format asked for on the command line, else ``$GATEWAY_LOG_FORMAT``, else text."""
    value = (chosen or os.environ.get(ENV) or "text").strip().lower()
    return value if value in FORMATS else "text"


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (it may be swapped after start-up)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str, fmt: str) -> None:
    """One stderr handler on the root logger (replacing an earlier one of ours: ``main`` may run twice).

    Like ``logging.basicConfig``, it leaves alone a process whose logging someone else set up (a test
    runner, an application embedding the CLI).
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, StderrHandler)]
    if len(ours) != len(root.handlers):
        return
    for old in ours:
        root.removeHandler(old)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
