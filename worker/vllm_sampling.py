"""The canonical generation parameters as vLLM's `SamplingParams`.

Part of the vLLM engine: only `worker.engine` imports this module (it imports vLLM).
"""

from __future__ import annotations

from typing import Any

from llmmesh.v1 import chat_pb2, events_pb2
from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

from worker.chat_messages import json_value
from worker.engine_protocol import RequestRejected
from worker.vllm_extensions import sampling_settings

__all__ = ["sampling_params", "structured_outputs"]


def sampling_params(parameters: chat_pb2.GenerationParameters, max_tokens: int) -> SamplingParams:
    """The canonical parameters (plus `provider_extensions["vllm"]`) as vLLM's, streaming
    deltas; vLLM's constructor validates the values (`VLLMValidationError`)."""

    def optional(name: str) -> Any:
        return getattr(parameters, name) if parameters.HasField(name) else None

    top_logprobs = optional("top_logprobs")
    if top_logprobs is not None and not parameters.logprobs:
        raise RequestRejected(
            events_pb2.ERROR_CODE_INVALID_REQUEST,
            "top_logprobs needs logprobs",
            field="generation_parameters.top_logprobs",
        )
    top_k = optional("top_k")
    settings: dict[str, Any] = {
        "n": optional("n"),
        "temperature": optional("temperature"),
        "top_p": optional("top_p"),
        "top_k": 0 if top_k is None or top_k == -1 else top_k,
        "max_tokens": max_tokens,
        "seed": optional("seed"),
        "stop": list(parameters.stop) or None,
        "presence_penalty": optional("presence_penalty"),
        "frequency_penalty": optional("frequency_penalty"),
        "logprobs": (top_logprobs or 0) if parameters.logprobs else None,
        "ignore_eos": bool(parameters.ignore_eos),
        "structured_outputs": structured_outputs(parameters.structured_output),
    }
    if "vllm" in parameters.provider_extensions:
        settings.update(sampling_settings(parameters.provider_extensions["vllm"]))
    return SamplingParams.from_optional(**settings, output_kind=RequestOutputKind.DELTA)


def structured_outputs(constraint: chat_pb2.StructuredOutput) -> StructuredOutputsParams | None:
    """vLLM's form of a structured-output constraint; None when the request has none."""
    kind = constraint.WhichOneof("constraint")
    if kind == "json_schema":
        return StructuredOutputsParams(json=json_value(constraint.json_schema.schema))
    if kind == "regex":
        return StructuredOutputsParams(regex=constraint.regex)
    if kind == "choice":
        return StructuredOutputsParams(choice=list(constraint.choice.choices))
    if kind == "json_object" and constraint.json_object:
        return StructuredOutputsParams(json_object=True)
    return None
