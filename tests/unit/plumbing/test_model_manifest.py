"""Model manifests: what a revision may contain, and how it is named and identified."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from plumbing.model_manifest import (
    ManifestFile,
    ModelManifest,
    check_model_name,
    check_revision,
    content_revision,
    detect_format,
    scan_directory,
)

SHA = "ab" * 32


def manifest(*files: ManifestFile) -> ModelManifest:
    return ModelManifest(
        name="tiny",
        revision="r1",
        created=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        format="safetensors",
        engine="vllm",
        files=files,
    )


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", "a//b", "./a", "a/../b", "a/", "a\\b", "", "manifest.json"]
)
def test_file_paths_cannot_escape_or_shadow(path: str) -> None:
    with pytest.raises(ValidationError):
        ManifestFile(path=path, size=1, sha256=SHA)


@pytest.mark.parametrize("sha256", ["AB" * 32, "ab" * 31, "zz" * 32])
def test_digests_are_lowercase_hex_sha256(sha256: str) -> None:
    with pytest.raises(ValidationError):
        ManifestFile(path="a", size=1, sha256=sha256)


def test_json_round_trip_keeps_the_digest() -> None:
    original = manifest(ManifestFile(path="sub/model.safetensors", size=10, sha256=SHA))

    parsed = ModelManifest.from_json(original.to_json())

    assert parsed == original
    assert parsed.digest() == original.digest()
    assert parsed.total_size == 10


def test_duplicate_paths_are_rejected() -> None:
    file = ManifestFile(path="a", size=1, sha256=SHA)
    with pytest.raises(ValidationError):
        manifest(file, file)


@pytest.mark.parametrize("name", ["", "-x", "a/b", "..", "_private", "x" * 129])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValueError):
        check_model_name(name)


def test_latest_is_not_a_revision() -> None:
    assert check_revision("2026-01-02.v1") == "2026-01-02.v1"
    with pytest.raises(ValueError):
        check_revision("latest")


def test_scan_hashes_files_and_skips_hidden_ones(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "weights.gguf").write_bytes(b"abc")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x").write_text("skip")
    (tmp_path / ".source.json").write_text("skip")

    files = scan_directory(tmp_path)

    assert [(f.path, f.size) for f in files] == [("config.json", 2), ("sub/weights.gguf", 3)]
    assert files[1].sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert detect_format(files) == "gguf"
    assert content_revision(files) == content_revision(reversed(files))
    assert len(content_revision(files)) == 12


def test_scan_rejects_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        scan_directory(tmp_path)
