#!/usr/bin/env bash
# Installs LiteLLM's proxy into its own venv, bench/.venv-litellm (git-ignored), for the
# overhead benchmark's LiteLLM target. Kept apart from the project's .venv: its pins
# (fastapi, pydantic, openai, ...) must not move ours.
#
#   bash bench/setup-litellm.sh            # the version measured in MACHINE-NOTES.md
#   LITELLM_VERSION=1.2.3 bash bench/setup-litellm.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-litellm"
version="${LITELLM_VERSION:-1.108.7}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "litellm[proxy]==$version"
LITELLM_LOCAL_MODEL_COST_MAP=True "$venv/bin/litellm" --version
