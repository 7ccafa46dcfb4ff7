"""`provider_extensions["vllm"]`: the vLLM sampling parameters a request may set directly.

Only the parameters the canonical `GenerationParameters` lack are allowed; internals (such
as `output_kind`) and duplicates of canonical fields are refused, so an extension can
neither break the engine's streaming nor contradict the canonical request. Values arrive as
a protobuf Struct (every number a double) and are checked and converted here; vLLM's own
`SamplingParams` validation then checks their ranges.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from google.protobuf import json_format, struct_pb2
from llmmesh.v1 import events_pb2

from worker.engine_protocol import RequestRejected

__all__ = ["ALLOWED", "sampling_settings"]


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected a number")
    return float(value)


def _integer(value: object) -> int:
    number = _number(value)
    if not number.is_integer():
        raise TypeError("expected an integer")
    return int(number)


def _integers(value: object) -> list[int]:
    if not isinstance(value, list):
        raise TypeError("expected a list of integers")
    return [_integer(item) for item in value]


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError("expected a list of strings")
    return list(value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected a boolean")
    return value


def _logit_bias(value: object) -> dict[int, float]:
    if not isinstance(value, dict):
        raise TypeError("expected an object of token id: bias")
    try:
        return {int(token): _number(bias) for token, bias in value.items()}
    except ValueError as exc:
        raise TypeError("token ids must be integers") from exc


ALLOWED: Mapping[str, Callable[[object], object]] = {
    "min_p": _number,
    "repetition_penalty": _number,
    "min_tokens": _integer,
    "stop_token_ids": _integers,
    "bad_words": _strings,
    "logit_bias": _logit_bias,
    "allowed_token_ids": _integers,
    "skip_special_tokens": _flag,
    "spaces_between_special_tokens": _flag,
    "include_stop_str_in_output": _flag,
}
"""Allowed keys → the converter of their Struct value (raises TypeError)."""


def sampling_settings(extensions: struct_pb2.Struct) -> dict[str, object]:
    """The extension's entries as `SamplingParams` keyword arguments.

    Raises `RequestRejected` (INVALID_REQUEST, field naming the key) for an unknown key or a
    value of the wrong type.
    """
    settings: dict[str, object] = {}
    for key, value in json_format.MessageToDict(extensions).items():
        field = f"generation_parameters.provider_extensions.vllm.{key}"
        convert = ALLOWED.get(key)
        if convert is None:
            raise RequestRejected(
                events_pb2.ERROR_CODE_INVALID_REQUEST,
                f"unknown vLLM parameter {key!r}; allowed: {', '.join(sorted(ALLOWED))}",
                field=field,
            )
        try:
            settings[key] = convert(value)
        except TypeError as exc:
            raise RequestRejected(
                events_pb2.ERROR_CODE_INVALID_REQUEST, f"{key}: {exc}", field=field
            ) from exc
    return settings
