"""Anthropic's Messages request body, as pydantic models (strict JSON types).

They validate `/v1/messages` bodies (`gateway/anthropic_api.py`) and give `/openapi.json` its
schema. Unknown top-level fields are allowed: they travel to the provider as
`provider_extensions["anthropic"]`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Base64Source",
    "ImageBlock",
    "MessageParam",
    "MessagesRequest",
    "RedactedThinkingBlock",
    "RequestMetadata",
    "TextBlock",
    "ThinkingBlock",
    "ThinkingDisabled",
    "ThinkingEnabled",
    "ToolChoiceAny",
    "ToolChoiceAuto",
    "ToolChoiceNone",
    "ToolChoiceTool",
    "ToolParam",
    "ToolResultBlock",
    "ToolUseBlock",
    "UrlSource",
]

#: Counts are int32 in the canonical schema.
_INT32_MAX = 2**31 - 1


class _Block(BaseModel):
    # `cache_control` and `citations` are accepted and ignored: they change no output.
    model_config = ConfigDict(extra="forbid", strict=True)

    cache_control: dict[str, Any] | None = None


class TextBlock(_Block):
    """Text."""

    type: Literal["text"]
    text: str
    citations: list[dict[str, Any]] | None = None


class Base64Source(_Block):
    """Inline image bytes."""

    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(_Block):
    """An image by address."""

    type: Literal["url"]
    url: str


class ImageBlock(_Block):
    """An image."""

    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]


class ToolUseBlock(_Block):
    """A tool call of an earlier assistant turn."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Block):
    """A tool's result, sent in a user turn."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] | None = (
        None
    )
    is_error: bool | None = None


class ThinkingBlock(_Block):
    """Reasoning of an earlier assistant turn, with its signature."""

    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(_Block):
    """Redacted reasoning (only its opaque data)."""

    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class MessageParam(BaseModel):
    """One turn."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class ToolParam(BaseModel):
    """A tool the model may call."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: dict[str, Any] | None = None


class _Choice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    disable_parallel_tool_use: bool | None = None


class ToolChoiceAuto(_Choice):
    """The model decides."""

    type: Literal["auto"]


class ToolChoiceAny(_Choice):
    """The model must call a tool."""

    type: Literal["any"]


class ToolChoiceTool(_Choice):
    """The model must call this tool."""

    type: Literal["tool"]
    name: str


class ToolChoiceNone(BaseModel):
    """No tools."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["none"]


class ThinkingEnabled(BaseModel):
    """Extended thinking on."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1, le=_INT32_MAX)


class ThinkingDisabled(BaseModel):
    """Extended thinking off."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["disabled"]


class RequestMetadata(BaseModel):
    """Request metadata."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str | None = None


class MessagesRequest(BaseModel):
    """The Messages request body; unknown fields → `provider_extensions["anthropic"]`."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1, le=_INT32_MAX)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1, le=_INT32_MAX)
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    tools: list[ToolParam] | None = None
    tool_choice: (
        Annotated[
            ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
            Field(discriminator="type"),
        ]
        | None
    ) = None
    thinking: Annotated[ThinkingEnabled | ThinkingDisabled, Field(discriminator="type")] | None = (
        None
    )
    metadata: RequestMetadata | None = None
