"""The server's log: plain text for people, or one JSON object per line for log collectors (`--log-format`).

Every line carries the request id of the call it is about ("-" outside a call); access-log lines
(inference.access_log) carry their fields as JSON keys too, so a collector needs no parsing.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from inference.access_log import RequestIdFilter

LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        entry.update(getattr(record, "access", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The usual text line; a line written during a call ends with that call's request id."""

    def __init__(self, worker: int | None = None) -> None:
        tag = f" [worker {worker}]" if worker is not None else ""
        super().__init__(f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", "-")
        if request_id != "-" and not hasattr(record, "access"):  # the access line names it already
            line += f" request_id={request_id}"
        return line


def configure_logging(level: str = "INFO", fmt: str = "text", *, worker: int | None = None) -> None:
    """Send the root logger to stderr in `fmt` ("text" or "json"); `worker` tags a --workers process's lines."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use one of {LOG_FORMATS}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
