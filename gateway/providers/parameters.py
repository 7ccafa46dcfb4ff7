"""Reading the canonical generation parameters on behalf of one provider.

Parameters that change what the client gets back (beam search, `n`, logprobs, a constraint the
provider cannot enforce, `ignore_eos`) are refused with `InvalidRequest` when the provider cannot
honour them; sampling hints it lacks (`seed`, `top_k`, penalties) are dropped, as TensorZero
does. Each adapter lists which is which in its docstring.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from llmmesh.v1 import chat_pb2

from gateway.providers.errors import InvalidRequest

__all__ = ["budget", "copy_parameters", "decimal", "refuse_unsupported", "tool_call_arguments"]


def decimal(value: float) -> float:
    """A float32 parameter as the decimal the client wrote (0.7, not 0.699999988079071)."""
    return float(f"{value:.7g}")


def budget(request: chat_pb2.ChatRequest, total_timeout: float) -> float:
    """The request's total time budget in seconds: its own `timeout`, capped by the config's."""
    if request.HasField("timeout"):
        asked = request.timeout.ToTimedelta().total_seconds()
        if asked > 0:
            return min(asked, total_timeout)
    return total_timeout


def _is_set(parameters: chat_pb2.GenerationParameters, name: str) -> bool:
    if name == "n":
        return parameters.HasField("n") and parameters.n > 1
    if name == "logprobs":
        return parameters.logprobs
    if name == "ignore_eos":
        return parameters.ignore_eos
    if name == "top_logprobs":
        return parameters.top_logprobs > 0
    if name == "beam_search":
        return parameters.HasField("beam_search") and parameters.beam_search.beam_width > 0
    if name.startswith("structured_output."):
        constraint: str | None = parameters.structured_output.WhichOneof("constraint")
        if constraint == "json_object" and not parameters.structured_output.json_object:
            return False
        return constraint == name.removeprefix("structured_output.")
    raise ValueError(f"unknown parameter name {name!r}")


def refuse_unsupported(
    request: chat_pb2.ChatRequest, *, provider: str, unsupported: Iterable[str]
) -> None:
    """Raises `InvalidRequest` naming the first parameter of `unsupported` the request sets.

    Names are `GenerationParameters` fields (`n` counts only above 1; `logprobs` and
    `ignore_eos` only when true) or `structured_output.<constraint>`.
    """
    for name in unsupported:
        if _is_set(request.generation_parameters, name):
            raise InvalidRequest(
                f"{provider} models do not support generation_parameters.{name}",
                provider=provider,
                field=f"generation_parameters.{name}",
            )


def tool_call_arguments(call: chat_pb2.ToolCall, provider: str) -> dict[str, Any]:
    """An earlier assistant tool call's arguments as the JSON object providers require.

    Raises `InvalidRequest` (field `messages.tool_calls.arguments`) when they are not one.
    """
    try:
        value = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError as exc:
        raise InvalidRequest(
            f"the arguments of tool call {call.id!r} are not JSON: {exc}",
            provider=provider,
            field="messages.tool_calls.arguments",
        ) from exc
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"the arguments of tool call {call.id!r} are not a JSON object",
            provider=provider,
            field="messages.tool_calls.arguments",
        )
    return value


def copy_parameters(
    params: chat_pb2.GenerationParameters,
    target: dict[str, Any],
    *,
    floats: Iterable[tuple[str, str]] = (),
    exact: Iterable[tuple[str, str]] = (),
) -> None:
    """Copies each set parameter into `target` under the provider's key.

    `floats` are (canonical field, provider key) pairs written as the decimal the client wrote
    (see `decimal`); `exact` pairs are copied as they are. Unset parameters are left out.
    """
    for field, key in floats:
        if params.HasField(field):
            target[key] = decimal(getattr(params, field))
    for field, key in exact:
        if params.HasField(field):
            target[key] = getattr(params, field)
