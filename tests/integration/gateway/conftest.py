"""Fixtures of the gateway integration tests (defined in `gateway_mesh.py`)."""

from gateway_mesh import (
    api_key,
    gateway,
    mesh,
    real_api_key,
    real_gateway,
    real_mesh,
    sqlite_keystore,
)

__all__ = [
    "api_key",
    "gateway",
    "mesh",
    "real_api_key",
    "real_gateway",
    "real_mesh",
    "sqlite_keystore",
]
