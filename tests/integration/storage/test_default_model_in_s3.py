"""The CPU default model (SmolLM2-135M, converted from its PyPI package) through S3 and back."""

from __future__ import annotations

import asyncio
import filecmp
from pathlib import Path

import pytest
from minio import Minio

from plumbing.model_store import ModelStore
from worker.model_source import DEFAULT_MODEL_NAME, prepare_packaged_model


@pytest.fixture(scope="module")
def converted_model(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted default model, in pytest's cache like the vLLM engine tests keep it (so
    the ~20 s conversion runs once across runs; a fresh one with `-p no:cacheprovider`)."""
    cache: pytest.Cache | None = getattr(pytestconfig, "cache", None)
    data_dir = (
        Path(cache.mkdir("llm-mesh-data")) if cache else tmp_path_factory.mktemp("llm-mesh-data")
    )
    return prepare_packaged_model(data_dir)


async def test_default_model_round_trips(
    s3_client: Minio, bucket: str, converted_model: Path, tmp_path: Path
) -> None:
    store = ModelStore(s3_client, bucket)

    manifest = await store.push(converted_model, DEFAULT_MODEL_NAME)
    local = await store.ensure_local(DEFAULT_MODEL_NAME, cache_dir=tmp_path / "cache")

    assert manifest.format == "safetensors"
    names = sorted(file.path for file in manifest.files)
    assert "config.json" in names
    assert "model.safetensors" in names
    # The converter's hidden source record stays local; everything else is identical.
    assert sorted(path.name for path in local.iterdir()) == names
    _, mismatch, errors = filecmp.cmpfiles(converted_model, local, names, shallow=False)
    assert (mismatch, errors) == ([], [])
    assert await asyncio.to_thread(_model_type, local) == "llama"


def _model_type(directory: Path) -> str:
    """The architecture transformers reads from the pulled directory."""
    from transformers import AutoConfig

    return str(AutoConfig.from_pretrained(directory).model_type)
