"""Fixtures of the observability tests (defined in `observability_mesh.py`)."""

from observability_mesh import mesh, prefix, spans

__all__ = ["mesh", "prefix", "spans"]
