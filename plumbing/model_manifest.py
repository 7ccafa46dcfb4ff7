"""The manifest of one model revision: its files with sizes and SHA-256, and how to serve it.

Stored as `models/<name>/<revision>/manifest.json` beside the files in the models bucket, and
copied into every node's cache. A revision is immutable: its manifest's digest identifies the
exact bytes a worker serves.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "LATEST",
    "MANIFEST_NAME",
    "ManifestFile",
    "ModelManifest",
    "check_model_name",
    "check_revision",
    "content_revision",
    "detect_format",
    "hash_file",
    "scan_directory",
]

#: The file name of the manifest inside a revision's prefix.
MANIFEST_NAME: Final = "manifest.json"
#: The revision that names a model's newest revision; never a real revision's name.
LATEST: Final = "latest"
#: Model names and revisions are single path segments, safe as S3 keys and directory names.
_SEGMENT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK: Final = 4 * 1024 * 1024


def check_model_name(name: str) -> str:
    """Returns `name` if it is a valid model name, else raises ValueError."""
    if not _SEGMENT.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def check_revision(revision: str) -> str:
    """Returns `revision` if it can name a stored revision (not `latest`), else ValueError."""
    if revision == LATEST or not _SEGMENT.fullmatch(revision):
        raise ValueError(
            f"invalid revision {revision!r}: use letters, digits, '.', '_' and '-', not {LATEST!r}"
        )
    return revision


class ManifestFile(BaseModel):
    """One file of a model: its path relative to the model directory, size and SHA-256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size: int = Field(ge=0)
    sha256: str

    @field_validator("path")
    @classmethod
    def _relative_path(cls, path: str) -> str:
        # Paths become local file names under the cache: nothing may escape the directory.
        parts = PurePosixPath(path).parts
        if (
            not parts
            or path.startswith("/")
            or "\\" in path
            or any(part in {"", ".", ".."} for part in parts)
            or str(PurePosixPath(*parts)) != path
        ):
            raise ValueError(f"not a plain relative path: {path!r}")
        if path == MANIFEST_NAME:
            raise ValueError(f"{MANIFEST_NAME} is reserved for the manifest itself")
        return path

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, sha256: str) -> str:
        if not _SHA256_HEX.fullmatch(sha256):
            raise ValueError(f"not a lowercase hex SHA-256: {sha256!r}")
        return sha256


class ModelManifest(BaseModel):
    """What a revision holds (`files`) and hints for serving it (`format`, `engine`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    manifest_version: Literal[1] = 1
    name: str
    revision: str
    created: datetime
    #: The weights' format: "safetensors", "gguf", "pytorch" or "unknown".
    format: str
    #: The engine the model is meant for, e.g. "vllm".
    engine: str
    files: tuple[ManifestFile, ...]

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return check_model_name(name)

    @field_validator("revision")
    @classmethod
    def _valid_revision(cls, revision: str) -> str:
        return check_revision(revision)

    @field_validator("files")
    @classmethod
    def _unique_paths(cls, files: tuple[ManifestFile, ...]) -> tuple[ManifestFile, ...]:
        paths = [file.path for file in files]
        if len(set(paths)) != len(paths):
            raise ValueError("duplicate file paths")
        return files

    @property
    def total_size(self) -> int:
        """The bytes of all files."""
        return sum(file.size for file in self.files)

    def to_json(self) -> bytes:
        """The manifest as stored (deterministic for equal manifests)."""
        return self.model_dump_json(indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ModelManifest:
        """Parses a stored manifest; raises pydantic's ValidationError if it is malformed."""
        return cls.model_validate_json(data)

    def digest(self) -> str:
        """The hex SHA-256 of `to_json()`: identifies this exact revision's contents."""
        return hashlib.sha256(self.to_json()).hexdigest()


def scan_directory(directory: Path) -> list[ManifestFile]:
    """Every regular file under `directory` (following symlinks, skipping hidden paths), hashed.

    Raises ValueError if the directory holds no files or a top-level `manifest.json`.
    """
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    files = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        files.append(
            ManifestFile(path=relative.as_posix(), size=path.stat().st_size, sha256=hash_file(path))
        )
    if not files:
        raise ValueError(f"{directory} holds no files")
    return files


def hash_file(path: Path) -> str:
    """The hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_revision(files: Iterable[ManifestFile]) -> str:
    """A revision name derived from the contents (12 hex digits), so re-pushing is idempotent."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda file: file.path):
        digest.update(f"{file.path}\0{file.size}\0{file.sha256}\n".encode())
    return digest.hexdigest()[:12]


def detect_format(files: Iterable[ManifestFile]) -> str:
    """The weights' format, guessed from the file names."""
    suffixes = {PurePosixPath(file.path).suffix for file in files}
    for suffix, name in ((".safetensors", "safetensors"), (".gguf", "gguf"), (".bin", "pytorch")):
        if suffix in suffixes:
            return name
    return "unknown"
