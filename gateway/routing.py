"""The routing file (DESIGN.md, "routing file"): which backend serves each model name, and the
default quotas of keys without quotas of their own.

    default_quotas: {requests_per_minute: 60, tokens_per_day: 1000000}
    models:
      smollm2-135m: {backend: self_hosted, default_priority: interactive}
      gpt-4o-mini:
        backend: openai
        upstream_model: gpt-4o-mini
        api_key_env: OPENAI_API_KEY
        fallback: smollm2-135m

`default_quotas` (optional; the same kinds a key can carry, `llm-mesh keys create
--requests-per-minute/--tokens-per-day`) applies to every key that has no quota of its own,
counted like a key's own quotas from the usage ledger, over all the key's models. A key with
any quota of its own is held to its own quotas alone: the defaults never add to them, and a
key's own quota wins over the default of the same kind. Without `default_quotas`, keys without
quotas are unlimited.

An invalid file stops the gateway at start-up with an error naming the entry; without a file
(`LLM_MESH_MODELS` unset) the only model is `smollm2-135m`, self-hosted, and there are no
default quotas.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final, Literal

import yaml
from llmmesh.v1 import chat_pb2
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, model_validator

from plumbing.keystore import Quotas

__all__ = [
    "DEFAULT_MODEL",
    "DefaultQuotas",
    "ModelRoute",
    "RoutingError",
    "RoutingTable",
    "load_routing",
]

#: The model served when no routing file is configured.
DEFAULT_MODEL: Final = "smollm2-135m"

Backend = Literal["self_hosted", "openai", "anthropic", "gemini"]


class RoutingError(ValueError):
    """The routing file is invalid; the message names the file and the entry."""


class ModelRoute(BaseModel):
    """How one model name is served."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend = Field(
        description="`self_hosted`: the mesh's workers serve it; otherwise the external "
        "provider's API, through its adapter."
    )
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
    default_priority: Literal["interactive", "batch"] = Field(
        default="interactive",
        description="The priority of a request that names none: interactive requests are served "
        "first; batch ones wait behind them and are never shed.",
    )
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


class DefaultQuotas(BaseModel):
    """The routing file's `default_quotas`: the quotas of every key without any of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description="Requests a key may start per minute (the last 60 s); unset = no limit.",
    )
    tokens_per_day: int | None = Field(
        default=None,
        ge=1,
        strict=True,
        description="Prompt plus completion tokens a key may use per UTC day; unset = no limit.",
    )

    @model_validator(mode="after")
    def _some_limit(self) -> DefaultQuotas:
        if self.requests_per_minute is None and self.tokens_per_day is None:
            raise ValueError("set requests_per_minute, tokens_per_day or both")
        return self

    def quotas(self) -> Quotas:
        """As the keystore's `Quotas`."""
        return Quotas(
            requests_per_minute=self.requests_per_minute, tokens_per_day=self.tokens_per_day
        )


class _RoutingFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_quotas: DefaultQuotas | None = None
    models: dict[str, ModelRoute] = Field(min_length=1)


class RoutingTable:
    """The validated routes, by model name, and the default quotas (None = none)."""

    def __init__(
        self, routes: dict[str, ModelRoute], *, default_quotas: Quotas | None = None
    ) -> None:
        self._routes = dict(routes)
        self._default_quotas = default_quotas
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

    @property
    def default_quotas(self) -> Quotas | None:
        """The quotas of every key without quotas of its own (None = such keys are unlimited)."""
        return self._default_quotas

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
    default_quotas = parsed.default_quotas.quotas() if parsed.default_quotas else None
    try:
        return RoutingTable(parsed.models, default_quotas=default_quotas)
    except RoutingError as exc:
        raise RoutingError(f"routing file {path}: {exc}") from exc
