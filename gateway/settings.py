"""The gateway's settings (`LLM_MESH_GATEWAY_*`), nesting the shared `LLM_MESH_*` ones."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from plumbing.settings import (
    OptionalPemFile,
    PositiveSeconds,
    Seconds,
    ServiceSettingsBase,
    require_together,
)

__all__ = ["GatewaySettings"]


class GatewaySettings(ServiceSettingsBase, BaseSettings):
    """Everything `llm-mesh gateway` needs; build once in `main()`, tests build it directly."""

    model_config = SettingsConfigDict(env_prefix="LLM_MESH_GATEWAY_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Listen address.")
    port: int = Field(default=8080, ge=0, le=65535, description="Listen port (0 = any free).")
    scheduler_targets: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:50051"],
        description="Scheduler gRPC targets, a comma list (host:port,...).",
    )
    service_credential: SecretStr | None = Field(
        default=None,
        description="The gateway's API key for the scheduler (a service key): its calls are "
        "metered by the gateway only.",
    )
    key_cache_ttl: Seconds = Field(
        default=10.0,
        description="Seconds a verified API key is trusted without asking the database again "
        "(a revoked key works this long at most); 0 = ask every time.",
    )
    total_timeout: PositiveSeconds = Field(
        default=600.0, description="Cap of a request's total budget, seconds (gRPC deadline)."
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest accepted request body, bytes."
    )
    max_n: int = Field(default=8, ge=1, description="Largest `n` (sequences per request).")
    sse_send_timeout: PositiveSeconds = Field(
        default=30.0, description="A client that does not read for this long is cut off."
    )
    ping_interval: PositiveSeconds = Field(
        default=15.0, description="SSE keep-alive comment interval once headers are out."
    )
    shutdown_grace: Seconds = Field(
        default=10.0, description="Seconds in-flight requests get to finish on shutdown."
    )
    tls_certfile: OptionalPemFile = Field(
        default=None, description="TLS certificate of the HTTP listener (PEM); with tls_keyfile."
    )
    tls_keyfile: OptionalPemFile = Field(
        default=None, description="TLS private key of the HTTP listener (PEM); with tls_certfile."
    )
    scheduler_tls_ca: OptionalPemFile = Field(
        default=None,
        description="CA bundle (PEM) the schedulers' gRPC certificates are verified against; "
        "setting it turns on TLS to the schedulers (their `LLM_MESH_SCHEDULER_TLS_*`). Each "
        "target's host must be named in its scheduler's certificate.",
    )
    scheduler_tls_certfile: OptionalPemFile = Field(
        default=None,
        description="Client certificate (PEM) shown to the schedulers, for mutual TLS (when "
        "they set `LLM_MESH_SCHEDULER_TLS_CLIENT_CA`); with scheduler_tls_keyfile.",
    )
    scheduler_tls_keyfile: OptionalPemFile = Field(
        default=None,
        description="Private key (PEM) of scheduler_tls_certfile.",
    )

    @field_validator("scheduler_targets", mode="before")
    @classmethod
    def _split_targets(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [target.strip() for target in value.split(",") if target.strip()]
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> GatewaySettings:
        require_together(tls_certfile=self.tls_certfile, tls_keyfile=self.tls_keyfile)
        require_together(
            scheduler_tls_certfile=self.scheduler_tls_certfile,
            scheduler_tls_keyfile=self.scheduler_tls_keyfile,
        )
        if self.scheduler_tls_certfile is not None and self.scheduler_tls_ca is None:
            raise ValueError("scheduler_tls_certfile needs scheduler_tls_ca: without it TLS is off")
        return self

    @model_validator(mode="after")
    def _some_scheduler(self) -> GatewaySettings:
        if not self.scheduler_targets:
            raise ValueError("scheduler_targets must name at least one scheduler")
        return self
