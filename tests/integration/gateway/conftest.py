"""Fixtures of the gateway integration tests (defined in `gateway_mesh.py`)."""

from gateway_mesh import api_key, gateway, mesh, sqlite_keystore, worker_engine

__all__ = ["api_key", "gateway", "mesh", "sqlite_keystore", "worker_engine"]
