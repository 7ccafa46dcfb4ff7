"""Structured logs: one JSON object per line, with the request's ids and its trace id.

Every record logged while a request is being handled carries that request's `RequestContext`
(request id, model, API key id — never the key), bound with `bind_request` for the task that
handles it (tasks it starts inherit it), and the current span's trace and span ids when
tracing is on (`plumbing.telemetry`). Fields passed with `extra=` are kept as JSON fields.

Secrets never reach a log line: API keys (`lm-<id>.<secret>`) and bearer tokens in a message
or a traceback are cut down to what identifies them (`lm-<id>.***`, `Bearer ***`).

`configure_logging` installs the formatter (`json`) or a one-line text format (`text`) on the
root logger; the `llm-mesh` CLI calls it with `--log-format` / `LLM_MESH_LOG_FORMAT`.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, TextIO

from opentelemetry import trace

__all__ = [
    "JsonFormatter",
    "LogFormat",
    "RequestContext",
    "bind_request",
    "configure_logging",
    "current_request",
    "redact",
]

LogFormat = Literal["text", "json"]

_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: `lm-<key id>.<secret>` (plumbing.keystore) and `Bearer <token>`.
_API_KEY: Final = re.compile(r"\b(lm-[A-Za-z0-9]+)\.[A-Za-z0-9_\-]+")
_BEARER: Final = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]+")
#: The attributes of every `LogRecord`: what is left after them was passed with `extra=`.
_RECORD_ATTRIBUTES: Final = frozenset(
    {*vars(logging.LogRecord("", 0, "", 0, "", None, None)), "message", "asctime", "taskName"}
)


@dataclass
class RequestContext:
    """The ids of the request being handled; filled in as they become known."""

    request_id: str = ""
    model: str = ""
    key_id: str = ""


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "llm_mesh_request", default=None
)


def current_request() -> RequestContext | None:
    """The request the running task handles, if any."""
    return _current.get()


@contextlib.contextmanager
def bind_request(
    request_id: str = "", *, model: str = "", key_id: str = ""
) -> Iterator[RequestContext]:
    """Binds a new `RequestContext` to the running task (and the tasks it starts) for the block.

    The context is mutable: fields set later (e.g. the request id once the scheduler chose
    it) show in every record logged after that.
    """
    request = RequestContext(request_id=request_id, model=model, key_id=key_id)
    token = _current.set(request)
    try:
        yield request
    finally:
        _current.reset(token)


def redact(text: str) -> str:
    """`text` without API key secrets and bearer tokens."""
    return _API_KEY.sub(r"\1.***", _BEARER.sub(r"\1 ***", text))


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, service, the
    request's ids, the trace ids, `extra=` fields, and the traceback if any."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if self._service:
            document["service"] = self._service
        request = _current.get()
        if request is not None:
            for name in ("request_id", "model", "key_id"):
                value = getattr(request, name)
                if value:
                    document[name] = value
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            document["trace_id"] = format(span_context.trace_id, "032x")
            document["span_id"] = format(span_context.span_id, "016x")
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_"):
                document[name] = value if _is_plain(value) else redact(str(value))
        if record.exc_info:
            document["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            document["exception"] = redact(record.exc_text)
        return json.dumps(document, ensure_ascii=False, default=str)


def _is_plain(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float)


class _RedactingFormatter(logging.Formatter):
    """The text format, with secrets cut out."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(
    level: str | int = "INFO",
    log_format: LogFormat = "text",
    *,
    service: str = "",
    stream: TextIO | None = None,
) -> None:
    """Sends every log record to `stream` (stderr) in `log_format`, replacing the root's
    handlers."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JsonFormatter(service) if log_format == "json" else _RedactingFormatter(_TEXT_FORMAT)
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
