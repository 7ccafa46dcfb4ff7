"""Fixtures of the quality gates (defined in `quality_engine.py`)."""

from quality_engine import engine, engine_host, quality_model_dir

__all__ = ["engine", "engine_host", "quality_model_dir"]
