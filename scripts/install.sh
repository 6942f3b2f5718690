#!/usr/bin/env bash
# Create .venv and install fedmtl. Usage: scripts/install.sh [test]
# Torch first, chosen for the machine: a CUDA build only where an NVIDIA GPU is present;
# elsewhere a CPU build (a local wheel if pip is configured with one, else PyTorch's CPU index),
# so that CPU-only machines never download the multi-gigabyte CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.13.0
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

if .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('torch').split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "torch $TORCH_VERSION already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing the CUDA build of torch $TORCH_VERSION"
  "${PIP[@]}" install "torch==$TORCH_VERSION"
else
  echo "no NVIDIA GPU: installing the CPU build of torch $TORCH_VERSION"
  # A CPU wheel that pip can already see (a wheel cache configured with find-links) installs
  # without its dependencies first; PyPI then supplies those. Otherwise PyTorch's CPU index.
  if "${PIP[@]}" install --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null \
     && .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit('+cpu' not in m.version('torch'))"; then
    "${PIP[@]}" install "torch==$TORCH_VERSION"
  else
    "${PIP[@]}" install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
  fi
fi

extra=""
[ "${1:-}" = "test" ] && extra="[test]"
"${PIP[@]}" install -e ".$extra"
