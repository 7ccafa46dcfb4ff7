"""JSON log lines: the request's ids, the trace ids, `extra=` fields, and no secrets."""

from __future__ import annotations

import io
import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from plumbing.structured_logs import JsonFormatter, bind_request, configure_logging, redact

API_KEY = "lm-0123456789abcdef.Zm9vYmFyYmF6cXV4LXNlY3JldC1zZWNyZXQtc2VjcmV0"


def _line(logger: logging.Logger, stream: io.StringIO) -> dict[str, object]:
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    document = json.loads(lines[0])
    assert isinstance(document, dict)
    return document


def _json_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("llm-mesh test"))
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_a_line_carries_the_bound_request_and_extra_fields() -> None:
    logger, stream = _json_logger("test.structured.request")
    with bind_request("req-1", model="m") as request:
        request.key_id = "abc"  # known later: still in the lines logged after
        logger.info("served %s", "it", extra={"status": 200, "route": "/v1/generate"})
    document = _line(logger, stream)
    assert document["message"] == "served it"
    assert document["service"] == "llm-mesh test"
    assert document["level"] == "INFO"
    assert (document["request_id"], document["model"], document["key_id"]) == ("req-1", "m", "abc")
    assert (document["status"], document["route"]) == (200, "/v1/generate")
    assert "trace_id" not in document


def test_no_request_no_ids() -> None:
    logger, stream = _json_logger("test.structured.none")
    logger.warning("idle")
    document = _line(logger, stream)
    assert "request_id" not in document and "key_id" not in document


def test_the_current_span_gives_the_trace_id() -> None:
    logger, stream = _json_logger("test.structured.trace")
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logger.info("inside")
    document = _line(logger, stream)
    context = span.get_span_context()
    assert document["trace_id"] == format(context.trace_id, "032x")
    assert document["span_id"] == format(context.span_id, "016x")


def test_api_keys_and_bearer_tokens_never_reach_a_line() -> None:
    logger, stream = _json_logger("test.structured.secrets")
    try:
        raise ValueError(f"bad key {API_KEY}")
    except ValueError:
        logger.exception(
            "refused Authorization: Bearer %s", API_KEY, extra={"header": f"Bearer {API_KEY}"}
        )
    text = stream.getvalue()
    secret = API_KEY.split(".", 1)[1]
    assert secret not in text
    document = _line(logger, stream)
    assert "lm-0123456789abcdef.***" in str(document["exception"])
    assert document["header"] == "Bearer ***"
    assert redact(f"key={API_KEY}") == "key=lm-0123456789abcdef.***"


def test_configure_logging_text_format_redacts_too() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", "text", stream=stream)
        logging.getLogger("test.structured.text").info("key %s", API_KEY)
        configure_logging("INFO", "json", service="svc", stream=stream)
        logging.getLogger("test.structured.text").info("json now")
    finally:
        root.handlers, root.level = saved[0], saved[1]
    first, second = stream.getvalue().splitlines()
    assert first.endswith("test.structured.text: key lm-0123456789abcdef.***")
    assert json.loads(second)["service"] == "svc"
