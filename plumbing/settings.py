"""Settings every service shares (`LLM_MESH_*`). Each service's own `Settings` nests these.

Build settings once in `main()` and pass them down; tests build them directly.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["MeshSettings"]


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "llm-mesh"


class MeshSettings(BaseSettings):
    """The settings shared by all services, read from `LLM_MESH_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="LLM_MESH_", extra="ignore")

    amqp_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        description="RabbitMQ connection URL.",
    )
    broker_prefix: str = Field(
        default="",
        description="Prefix of every broker name, so that stacks sharing a broker never mix.",
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Model cache and local state (the SQLite database by default).",
    )
    database_url: str = Field(
        default="",
        description="Keys and usage database: a PostgreSQL DSN, or empty for SQLite in data_dir.",
    )
    models: Path | None = Field(
        default=None, description="The routing file (YAML); unset = the built-in default."
    )
    s3_endpoint: str = Field(default="", description="S3-compatible endpoint, host:port.")
    s3_access_key: str = Field(default="", description="S3 access key.")
    s3_secret_key: SecretStr = Field(default=SecretStr(""), description="S3 secret key.")
    s3_secure: bool = Field(default=False, description="Use TLS to reach S3.")
