"""OpenAI's Chat Completions request body, as pydantic models (strict JSON types).

They validate `/v1/chat/completions` bodies (`gateway/openai_api.py`) and give
`/openapi.json` its schema. Unknown top-level fields are allowed: they travel to the provider
as `provider_extensions["openai"]`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AssistantMessage",
    "ChatCompletionRequest",
    "ImagePart",
    "JsonObjectFormat",
    "JsonSchemaResponseFormat",
    "NamedToolChoice",
    "RefusalPart",
    "SystemMessage",
    "TextPart",
    "ToolMessage",
    "UserMessage",
]

_INT64 = 2**63
#: Counts are int32 in the canonical schema.
_INT32_MAX = 2**31 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    """A text content part."""

    type: Literal["text"]
    text: str


class ImageUrl(_Strict):
    """An image address (http(s) or data: URL)."""

    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    """An image content part."""

    type: Literal["image_url"]
    image_url: ImageUrl


class RefusalPart(_Strict):
    """A refusal content part of an earlier assistant turn."""

    type: Literal["refusal"]
    refusal: str


class FunctionCall(_Strict):
    """The function of a tool call."""

    name: str
    arguments: str


class ToolCallParam(_Strict):
    """A tool call of an earlier assistant turn."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Strict):
    """A system (or developer) message."""

    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Strict):
    """A user message."""

    role: Literal["user"]
    content: str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]]
    name: str | None = None


class AssistantMessage(_Strict):
    """An earlier assistant turn."""

    role: Literal["assistant"]
    content: str | list[Annotated[TextPart | RefusalPart, Field(discriminator="type")]] | None = (
        None
    )
    refusal: str | None = None
    tool_calls: list[ToolCallParam] | None = None
    reasoning_content: str | None = None
    name: str | None = None


class ToolMessage(_Strict):
    """A tool's result."""

    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionDefinition(_Strict):
    """A callable function."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Strict):
    """A tool the model may call."""

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Strict):
    """A function named by `tool_choice`."""

    name: str


class NamedToolChoice(_Strict):
    """`tool_choice` naming one function."""

    type: Literal["function"]
    function: FunctionName


class JsonSchemaFormat(_Strict):
    """The JSON schema of `response_format`."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextFormat(_Strict):
    """Plain text output."""

    type: Literal["text"]


class JsonObjectFormat(_Strict):
    """Any JSON object."""

    type: Literal["json_object"]


class JsonSchemaResponseFormat(_Strict):
    """JSON matching a schema."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


class StreamOptions(BaseModel):
    """Streaming options (unknown ones are ignored, as OpenAI adds them over time)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    """The Chat Completions request body; unknown fields → `provider_extensions["openai"]`."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=_INT32_MAX)
    max_tokens: int | None = Field(default=None, ge=1, le=_INT32_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=_INT32_MAX)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-_INT64, lt=_INT64)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: (
        Annotated[
            TextFormat | JsonObjectFormat | JsonSchemaResponseFormat,
            Field(discriminator="type"),
        ]
        | None
    ) = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
