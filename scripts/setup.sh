#!/usr/bin/env bash
# Create .venv and install minivl with its development tools, once.
#
# Without a GPU, a CPU build of torch is installed first, so that pip does not fetch a
# multi-gigabyte CUDA build: a local wheel if pip's configuration offers one, else the
# PyTorch CPU index. With a GPU (nvidia-smi present), the default PyPI build is used.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
STAMP="$VENV/.minivl-installed"

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "minivl: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "minivl: GPU found, installing torch==$TORCH_VERSION (CUDA build)"
    "${PIP[@]}" install "torch==$TORCH_VERSION"
  else
    echo "minivl: no GPU, installing a CPU build of torch==$TORCH_VERSION"
    # 1) a local CPU wheel offered by pip's configuration (find-links): probe it without the
    #    network (--no-index --no-deps), then let pip add torch's small dependencies;
    # 2) else the official CPU index.
    if "${PIP[@]}" install --quiet --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null; then
      "${PIP[@]}" install "torch==$TORCH_VERSION"
    else
      "${PIP[@]}" install "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
fi

echo "minivl: installing minivl and its development tools (pip install -e .[dev])"
"${PIP[@]}" install -e ".[dev]"
touch "$STAMP"
echo "minivl: ready ($VENV)"
