"""The worker's settings (`LLM_MESH_WORKER_*`), nesting the shared `MeshSettings`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from plumbing.settings import PositiveSeconds, ProbeBind, Seconds, ServiceSettingsBase

__all__ = ["EngineKind", "ModelSource", "Settings"]

EngineKind = Literal["vllm", "synthetic"]
#: Where the model's files come from: `local` = `model_dir`, or else the packaged default
#: model; `s3` = the models bucket, pulled into the node's cache before consuming.
ModelSource = Literal["local", "s3"]


class Settings(ServiceSettingsBase, BaseSettings):
    """Everything one worker reads; build it once in `main()` and pass it down."""

    model_config = SettingsConfigDict(env_prefix="LLM_MESH_WORKER_", extra="ignore")

    model: str = Field(default="smollm2-135m", description="The routing name of the model.")
    model_dir: Path | None = Field(
        default=None,
        description="vLLM: the model's Hugging Face directory; unset = the packaged default "
        "model (smollm2-135m), converted into the model cache on first start.",
    )
    model_source: ModelSource = Field(
        default="local",
        description="`local`: `model_dir`, or else the packaged default model (no S3 needed); "
        "`s3`: pull the model's `model_revision` from the models bucket (LLM_MESH_S3_*) into "
        "`<data_dir>/models/_s3/` before consuming, reusing a complete cached copy.",
    )
    model_revision: str = Field(
        default="latest",
        description="With `model_source=s3`: the revision to serve; `latest` = the newest "
        "stored one (or, when storage is down, the newest complete cached one).",
    )
    engine: EngineKind = Field(
        default="vllm",
        description="`vllm`, or `synthetic`: a deterministic fixed-rate engine for benchmarks "
        "and fault tests, never the default.",
    )
    priority: int = Field(
        default=1,
        ge=0,
        description="Consumer priority (`x-priority`) of the hardware class: higher is served "
        "first, lower only takes overflow.",
    )
    hardware_class: str = Field(default="cpu", description="Free text announced in heartbeats.")
    capacity: int = Field(
        default=8, ge=1, description="Sequences run at once: the task queue's prefetch."
    )
    max_n: int = Field(
        default=8,
        ge=1,
        description="Largest `n` (sequences per request) the worker runs: a task asking for "
        "more is rejected as an invalid request. The scheduler has its own `max_n`, but anyone "
        "who can publish to the broker can bypass it.",
    )
    worker_id: str = Field(default="", description="Unique id; empty = host, pid and random.")
    http_bind: ProbeBind = "127.0.0.1:9102"
    heartbeat_interval: PositiveSeconds = Field(
        default=2.0, description="Seconds between heartbeats."
    )
    grace_period: Seconds = Field(
        default=30.0, description="On SIGTERM, how long in-flight requests may finish."
    )
    reply_flush_interval: Seconds = Field(
        default=0.015,
        description="Coalescing window of reply chunks: at most one chunk per request per "
        "window, except the start, the first token and the end, which go at once.",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="A task redelivered this many times (it keeps killing workers) is "
        "dead-lettered.",
    )
    cancelled_ttl: PositiveSeconds = Field(
        default=600.0, description="How long cancelled request ids are remembered."
    )
    synthetic_max_context: int = Field(
        default=2048, ge=1, description="Synthetic: the context length, in tokens."
    )
    synthetic_supports_tools: bool = Field(
        default=False, description="Synthetic: accept requests with tools."
    )
    synthetic_tokens: int = Field(
        default=16, ge=1, description="Synthetic: tokens before the end-of-sequence token."
    )
    synthetic_token_interval: Seconds = Field(
        default=0.02, description="Synthetic: seconds between tokens."
    )
    synthetic_first_token_delay: Seconds = Field(
        default=0.0, description="Synthetic: seconds before the first token (prefill)."
    )
    engine_watchdog_window: PositiveSeconds = Field(
        default=60.0,
        description="While requests run, the engine must produce an output at least this "
        "often (seconds; above the slowest prefill under load), else the worker stops serving "
        "and ends them with a retryable error (worker/watchdog.py).",
    )
    synthetic_hang_after: int | None = Field(
        default=None,
        ge=1,
        description="Synthetic: hang (produce nothing, forever) after this many token steps "
        "of every request; for watchdog tests.",
    )
    synthetic_prepare_delay: Seconds = Field(
        default=0.0, description="Synthetic: seconds `prepare` takes (template rendering)."
    )
    payload_threshold_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        description="The largest reply chunk, serialized: events coalesced beyond it go out "
        "in several chunks (the broker carries small messages only).",
    )

    @model_validator(mode="after")
    def _one_model_source(self) -> Self:
        if self.model_source == "s3" and self.model_dir is not None:
            raise ValueError("model_dir and model_source=s3 exclude each other")
        return self
