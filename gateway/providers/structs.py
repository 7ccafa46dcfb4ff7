"""Protobuf `Struct` values (schemas, extensions, provider metadata) as plain JSON and back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

__all__ = ["struct_from_json", "struct_to_json"]


def struct_to_json(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A `Struct` as plain JSON values, integral numbers as ints.

    A `Struct` keeps every number as a double; providers validate integer fields
    (`max_tokens`, `budget_tokens`, `thinkingBudget`) and may refuse `1024.0`.
    """
    result: dict[str, Any] = _integral(json_format.MessageToDict(struct))
    return result


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def struct_from_json(values: Mapping[str, Any]) -> struct_pb2.Struct:
    """A `Struct` holding `values`."""
    result = struct_pb2.Struct()
    result.update(values)
    return result
