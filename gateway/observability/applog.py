"""Application logs on stderr: human-readable text (default) or one JSON object per line.

JSON lines suit log collectors (Loki, CloudWatch, Elastic) that would otherwise split a traceback
into many records. The access and audit logs are separate sinks (``jsonlog``) and always JSON.

A record is formatted where it is logged and written by a thread (``logqueue``): a stderr pipe
nobody reads never blocks the event loop; past ``logging.queue_lines`` waiting records, new ones are
dropped and counted (``llm_gateway_log_records_dropped_total{log="app"}``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

import orjson

from gateway.observability.logqueue import CLOSE_WAIT_S, DEFAULT_MAX_LINES, LogQueue

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


class StderrHandler(logging.Handler):
    """Queues each formatted record for a thread writing to ``stream()`` (by default whatever
    ``sys.stderr`` is when it writes: it may be swapped after start-up)."""

    def __init__(self, stream: Callable[[], TextIO] | None = None, max_records: int = DEFAULT_MAX_LINES) -> None:
        super().__init__()
        self._stream = stream or (lambda: sys.stderr)
        self.queue = LogQueue("app", self._write, max_records)
        self._stuck = False  # a flush timed out: the output is not being read

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # noqa: BLE001 - as logging.StreamHandler: a bad record is reported, not raised
            self.handleError(record)
            return
        self.queue.put(line.encode("utf-8", "replace"))

    def _write(self, data: bytes) -> None:
        stream = self._stream()
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            stream.flush()  # anything written to the text layer directly goes first
            buffer.write(data)
        else:
            stream.write(data.decode("utf-8", "replace"))
        stream.flush()

    def flush(self) -> None:
        """Wait (bounded) until queued records are written: ``logging.shutdown`` calls this at exit."""
        self._stuck = not self.queue.flush(0.0 if self._stuck else CLOSE_WAIT_S)

    def close(self) -> None:
        self.queue.close(0.0 if self._stuck else CLOSE_WAIT_S)  # a stuck stderr is waited for once only
        super().close()


def set_queue_limit(max_records: int) -> None:
    """Apply the policy's ``logging.queue_lines`` to the app log's handler (``configure_logging``'s)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, StderrHandler):
            handler.queue.max_lines = max_records


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
        old.close()
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
