"""The routing file (DESIGN.md, "routing file"): which backend serves each model name.

    models:
      smollm2-135m: {backend: self_hosted, default_priority: interactive}
      gpt-4o-mini:
        backend: openai
        upstream_model: gpt-4o-mini
        api_key_env: OPENAI_API_KEY
        fallback: smollm2-135m

An invalid file stops the gateway at start-up with an error naming the entry; without a file
(`LLM_MESH_MODELS` unset) the only model is `smollm2-135m`, self-hosted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final, Literal

import yaml
from llmmesh.v1 import chat_pb2
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, model_validator

__all__ = ["DEFAULT_MODEL", "ModelRoute", "RoutingError", "RoutingTable", "load_routing"]

#: The model served when no routing file is configured.
DEFAULT_MODEL: Final = "smollm2-135m"

Backend = Literal["self_hosted", "openai", "anthropic", "gemini"]


class RoutingError(ValueError):
    """The routing file is invalid; the message names the file and the entry."""


class ModelRoute(BaseModel):
    """How one model name is served."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend
    upstream_model: str | None = Field(
        default=None, min_length=1, description="The provider's model name (external only)."
    )
    base_url: HttpUrl | None = Field(
        default=None,
        description="The provider's API base URL (external only; tests point it "
        "at a local replay server).",
    )
    api_key_env: str | None = Field(
        default=None,
        min_length=1,
        description="The environment variable holding the provider's API key (external only).",
    )
    fallback: str | None = Field(
        default=None, description="The model to try when this one is unavailable."
    )
    default_priority: Literal["interactive", "batch"] = "interactive"
    max_context: int | None = Field(default=None, ge=1, description="Context length, tokens.")
    connect_timeout: float = Field(default=10.0, gt=0, description="Outbound connect, seconds.")
    read_timeout: float = Field(default=600.0, gt=0, description="Outbound read, seconds.")

    @model_validator(mode="after")
    def _backend_fields(self) -> ModelRoute:
        if self.backend == "self_hosted":
            for name in ("upstream_model", "base_url", "api_key_env"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} applies only to external backends")
        elif self.api_key_env is None:
            raise ValueError(f"backend {self.backend} needs api_key_env")
        return self

    @property
    def priority(self) -> chat_pb2.Priority:
        """The `Priority` a request without one gets."""
        if self.default_priority == "batch":
            return chat_pb2.PRIORITY_BATCH
        return chat_pb2.PRIORITY_INTERACTIVE


class _RoutingFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelRoute] = Field(min_length=1)


class RoutingTable:
    """The validated routes, by model name."""

    def __init__(self, routes: dict[str, ModelRoute]) -> None:
        self._routes = dict(routes)
        for name, route in self._routes.items():
            seen = [name]
            fallback = route.fallback
            while fallback is not None:
                if fallback not in self._routes:
                    raise RoutingError(f"models.{name}.fallback: unknown model {fallback!r}")
                if fallback in seen:
                    chain = " -> ".join([*seen, fallback])
                    raise RoutingError(f"models.{name}.fallback: cycle {chain}")
                seen.append(fallback)
                fallback = self._routes[fallback].fallback

    @classmethod
    def default(cls) -> RoutingTable:
        """The table used without a routing file."""
        return cls({DEFAULT_MODEL: ModelRoute(backend="self_hosted")})

    def __contains__(self, model: object) -> bool:
        return model in self._routes

    def __iter__(self) -> Iterator[str]:
        return iter(self._routes)

    def get(self, model: str) -> ModelRoute | None:
        """The route of `model`, or None."""
        return self._routes.get(model)

    def chain(self, model: str) -> list[tuple[str, ModelRoute]]:
        """`model`'s route followed by its fallbacks, in order (model must exist)."""
        result: list[tuple[str, ModelRoute]] = []
        name: str | None = model
        while name is not None:
            route = self._routes[name]
            result.append((name, route))
            name = route.fallback
        return result

    def self_hosted(self) -> list[str]:
        """The self-hosted model names."""
        return [name for name, route in self._routes.items() if route.backend == "self_hosted"]

    def external(self) -> list[str]:
        """The external model names."""
        return [name for name, route in self._routes.items() if route.backend != "self_hosted"]


def load_routing(path: Path | None) -> RoutingTable:
    """Reads and validates the routing file; None = the default table.

    Raises `RoutingError` naming the file and the offending entry.
    """
    if path is None:
        return RoutingTable.default()
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RoutingError(f"routing file {path}: {exc}") from exc
    try:
        parsed = _RoutingFile.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise RoutingError(f"routing file {path}: {problems}") from exc
    try:
        return RoutingTable(parsed.models)
    except RoutingError as exc:
        raise RoutingError(f"routing file {path}: {exc}") from exc
