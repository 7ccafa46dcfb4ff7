"""A request's prompt for vLLM: the chat template's inputs, the rendered and tokenized prompt,
and the generation budget left by the model's context.

Part of the vLLM engine: only `worker.engine` imports this module (it imports vLLM).
"""

from __future__ import annotations

import re
from typing import Any

from jinja2 import TemplateError
from llmmesh.v1 import chat_pb2, events_pb2
from vllm.tokenizers import TokenizerLike

from worker.chat_messages import template_messages, template_tools
from worker.engine_protocol import ModelCard, RequestRejected

__all__ = ["max_tokens", "render", "template_inputs", "template_takes_tools"]

_INVALID = events_pb2.ERROR_CODE_INVALID_REQUEST


def template_takes_tools(tokenizer: TokenizerLike) -> bool:
    """Whether the tokenizer's chat template renders tools.

    A template that never mentions `tools` drops them silently: the engine refuses them instead.
    """
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and re.search(r"\btools\b", template) is not None


def template_inputs(
    request: chat_pb2.ChatRequest, card: ModelCard
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The chat template's messages and tools (None without tools).

    Raises `RequestRejected` for tools the model's template cannot take, and for a forced tool
    call (vLLM's engine cannot force one).
    """
    tools = template_tools(request.tools)
    if tools and not card.supports_tools:
        raise RequestRejected(_INVALID, f"model {card.name} does not support tools", field="tools")
    if (
        tools
        and request.tool_choice.WhichOneof("choice") is not None
        and (
            request.tool_choice.HasField("function_name")
            or request.tool_choice.mode == chat_pb2.ToolChoice.MODE_REQUIRED
        )
    ):
        raise RequestRejected(
            _INVALID,
            "the vLLM engine cannot force a tool call (tool_choice required or named)",
            field="tool_choice",
        )
    return template_messages(request.messages, card.supports_tools), tools or None


def render(
    tokenizer: TokenizerLike,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
) -> tuple[str, list[int]]:
    """The prompt text and its token ids (vLLM's tokenizer is safe to call from threads).

    Raises `RequestRejected` when the chat template rejects the messages.
    """
    try:
        text = tokenizer.apply_chat_template(
            messages,  # type: ignore[arg-type]  # the OpenAI-shaped dicts templates take
            tools=tools,
            add_generation_prompt=True,
            tokenize=False,
        )
    except (TemplateError, ValueError) as exc:
        raise RequestRejected(
            _INVALID, f"the chat template rejects the messages: {exc}", field="messages"
        ) from exc
    if not isinstance(text, str):
        raise TypeError("apply_chat_template(tokenize=False) returned token ids")
    # The template already wrote the special tokens (e.g. <|im_start|>).
    return text, tokenizer.encode(text, add_special_tokens=False)


def max_tokens(
    parameters: chat_pb2.GenerationParameters,
    prompt_tokens: int,
    card: ModelCard,
    default_max_tokens: int,
) -> int:
    """The tokens a request may generate: its `max_tokens`, else the rest of the context capped
    by `default_max_tokens`.

    Raises `RequestRejected` (INVALID_REQUEST for `max_tokens` below 1; CONTEXT_LENGTH_EXCEEDED
    when the prompt plus `max_tokens`, or plus one token, does not fit the context).
    """
    requested = parameters.max_tokens if parameters.HasField("max_tokens") else None
    if requested is not None and requested < 1:
        raise RequestRejected(
            _INVALID, "max_tokens must be at least 1", field="generation_parameters.max_tokens"
        )
    if prompt_tokens + (requested or 1) > card.max_context:
        raise RequestRejected(
            events_pb2.ERROR_CODE_CONTEXT_LENGTH_EXCEEDED,
            f"the prompt has {prompt_tokens} tokens"
            + (f" and max_tokens is {requested}" if requested else "")
            + f": more than the {card.max_context} tokens of {card.name}'s context",
            field="messages",
        )
    if requested is None:
        return min(card.max_context - prompt_tokens, default_max_tokens)
    return requested
