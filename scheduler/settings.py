"""The scheduler's settings (`LLM_MESH_SCHEDULER_*`), nesting the shared `MeshSettings`."""

from __future__ import annotations

from typing import Self

from pydantic import Field, HttpUrl, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from plumbing.object_store import DEFAULT_PAYLOAD_BUCKET
from plumbing.settings import (
    OptionalPemFile,
    PositiveSeconds,
    ProbeBind,
    Seconds,
    ServiceSettingsBase,
    require_together,
)

__all__ = ["Settings"]


class Settings(ServiceSettingsBase, BaseSettings):
    """Everything one scheduler replica reads; build it once in `main()` and pass it down.

    Timeouts are in seconds and follow DESIGN.md: `queue` until a worker accepts the task
    (also the task's message expiration), `first_token` from acceptance to the first token,
    `idle` between chunks after it, `total` the cap of a request's whole budget.

    Requests whose serialized form exceeds `payload_threshold_bytes` travel by reference
    through object storage (`mesh.s3_*`); without storage configured they are refused.
    """

    model_config = SettingsConfigDict(env_prefix="LLM_MESH_SCHEDULER_", extra="ignore")

    grpc_bind: str = Field(
        default="127.0.0.1:50051", description="gRPC listen address; port 0 picks a free port."
    )
    tls_certfile: OptionalPemFile = Field(
        default=None,
        description="TLS certificate chain of the gRPC port (PEM); with tls_keyfile. Unset = "
        "plaintext gRPC. Clients trust its CA with `LLM_MESH_GATEWAY_SCHEDULER_TLS_CA`.",
    )
    tls_keyfile: OptionalPemFile = Field(
        default=None, description="Private key (PEM) of tls_certfile."
    )
    tls_client_ca: OptionalPemFile = Field(
        default=None,
        description="CA bundle (PEM): when set, every gRPC client must present a certificate "
        "signed by it (mutual TLS). Needs tls_certfile.",
    )
    http_bind: ProbeBind = "127.0.0.1:9101"
    queue_timeout: PositiveSeconds = Field(
        default=30.0,
        description="`queue` timeout: until a worker accepts the task (also its message "
        "expiration); past it the request fails (the gateway's 504).",
    )
    first_token_timeout: PositiveSeconds = Field(
        default=60.0,
        description="`first_token` timeout: from the worker's acceptance to the first token.",
    )
    idle_timeout: PositiveSeconds = Field(
        default=30.0, description="`idle` timeout: the longest gap between two chunks."
    )
    total_timeout: PositiveSeconds = Field(
        default=600.0, description="`total` timeout: the cap of any request's budget."
    )
    max_n: int = Field(
        default=8,
        ge=1,
        description="Largest `n` (sequences per request): each costs a worker memory and time.",
    )
    max_queued_per_model: int = Field(
        default=256,
        ge=0,
        description="Interactive requests of one model that may wait for a worker on this "
        "replica; past it new ones are shed (RESOURCE_EXHAUSTED, the gateway's 429). Batch "
        "requests are never shed. 0 = no limit.",
    )
    demux_queue_size: int = Field(
        default=256, ge=1, description="Chunks buffered per request before a slow reader fails."
    )
    grace_period: Seconds = Field(
        default=10.0, description="How long in-flight streams may finish on shutdown."
    )
    missed_heartbeats: float = Field(
        default=3.0, gt=1, description="A worker is gone after this many heartbeat intervals."
    )
    discovery_period: Seconds = Field(
        default=5.0,
        description="After start, how long the registry listens before it fails requests fast "
        "for models without a live worker.",
    )
    registry_sweep_interval: PositiveSeconds = Field(
        default=0.25, description="How often expired workers are looked for."
    )
    queue_poll_interval: PositiveSeconds = Field(
        default=2.0,
        description="How often each model's task queue is polled on the broker for its depth "
        "and consumers (the `llm_mesh_scheduler_queue_messages`, "
        "`llm_mesh_scheduler_queue_messages_unacknowledged` and "
        "`llm_mesh_scheduler_queue_consumers` gauges).",
    )
    broker_management_url: HttpUrl | None = Field(
        default=None,
        description="RabbitMQ's management HTTP API (the `rabbitmq_management` plugin), e.g. "
        "`http://127.0.0.1:15672/`. When set, the queue gauges come from it and include the "
        "unacknowledged messages (tasks workers are running); when unset, a passive declare "
        "counts the ready messages and consumers only. Its user and password come from this "
        "URL, else from the AMQP URL (the user needs a management tag: `monitoring` or above).",
    )
    broker_management_timeout: PositiveSeconds = Field(
        default=5.0, description="Connect and read timeout of the management API calls."
    )
    require_api_keys: bool = Field(
        default=True,
        description="Check `authorization: Bearer` API keys on the gRPC API (scheduler/auth.py); "
        "turn off only on a private network where the gateway is the sole caller.",
    )
    max_request_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest `Generate` request accepted over gRPC (its max receive size).",
    )
    payload_threshold_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="A request whose serialized form is larger is stored in object storage "
        "and its task carries a reference: the broker carries small messages only.",
    )
    payload_bucket: str = Field(
        default=DEFAULT_PAYLOAD_BUCKET, description="The bucket of stored request bodies."
    )
    payload_ttl: PositiveSeconds = Field(
        default=3600.0,
        description="Stored request bodies older than this are leftovers of crashed replicas "
        "(every request ends within `total_timeout`) and are swept; must exceed it.",
    )
    payload_sweep_interval: PositiveSeconds = Field(
        default=600.0, description="How often the payload bucket is swept of leftovers."
    )

    @model_validator(mode="after")
    def _tls_files(self) -> Self:
        require_together(tls_certfile=self.tls_certfile, tls_keyfile=self.tls_keyfile)
        if self.tls_client_ca is not None and self.tls_certfile is None:
            raise ValueError("tls_client_ca needs tls_certfile and tls_keyfile: TLS is off")
        return self

    @model_validator(mode="after")
    def _payloads_outlive_requests(self) -> Self:
        if self.payload_ttl <= self.total_timeout:
            raise ValueError(
                f"payload_ttl ({self.payload_ttl:g} s) must exceed total_timeout "
                f"({self.total_timeout:g} s), or live requests lose their bodies"
            )
        return self
