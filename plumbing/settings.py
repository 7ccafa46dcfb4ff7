"""Settings every service shares (`LLM_MESH_*`), and the building blocks of each service's own.

Each service's `Settings` derives from `ServiceSettingsBase`, which nests the shared ones as
`mesh`, and types its fields with the shapes below: durations in seconds, the probes' HTTP
address and PEM files; `require_together` checks the settings that only make sense as a pair
(a TLS certificate and its key).
Build settings once in `main()` and pass them down; tests build them directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "MeshSettings",
    "OptionalPemFile",
    "PositiveSeconds",
    "ProbeBind",
    "Seconds",
    "ServiceSettingsBase",
    "require_together",
]

#: A duration in seconds, more than zero: timeouts, intervals, lifetimes.
PositiveSeconds = Annotated[float, Field(gt=0)]
#: A duration in seconds, zero allowed: grace periods, delays, coalescing windows.
Seconds = Annotated[float, Field(ge=0)]
#: A service's HTTP address for its probes and metrics (`plumbing.probes.parse_bind` reads it).
ProbeBind = Annotated[
    str,
    Field(description="HTTP address of /healthz, /readyz and /metrics; port 0 picks a free port."),
]


def _existing_file(path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        raise ValueError(f"{path} is not a file")
    return path


#: Unset, or a PEM file (TLS certificate chain, private key or CA bundle) that exists when the
#: settings are built: a wrong path stops the service at start, naming the setting. (The check
#: wraps the whole optional type, so the settings reference reads it as a path.)
OptionalPemFile = Annotated[Path | None, AfterValidator(_existing_file)]


def require_together(**settings: object) -> None:
    """Raises `ValueError` naming the missing ones unless all `settings` (name=value) are set
    or all are unset (`None`); call it from a `model_validator`."""
    missing = [name for name, value in settings.items() if value is None]
    if missing and len(missing) < len(settings):
        raise ValueError(
            f"{' and '.join(settings)} must be set together: {', '.join(missing)} is not set"
        )


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
        description="Model cache and local state: the SQLite keys and usage database (unless "
        "database_url is set); under `llm-mesh up` also its SeaweedFS data and dev key.",
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


class ServiceSettingsBase(BaseModel):
    """The first base of each service's `Settings(ServiceSettingsBase, BaseSettings)`, which
    sets its own `env_prefix`: the shared settings, nested as `mesh` and read from their own
    `LLM_MESH_*` variables. A plain model, not a settings class: it reads no variables itself."""

    mesh: MeshSettings = Field(default_factory=MeshSettings, description="Shared settings.")
