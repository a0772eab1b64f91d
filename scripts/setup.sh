#!/usr/bin/env bash
# One-time set-up on a fresh machine: the real Fashion-MNIST files (Debian package) and a
# virtualenv in .venv with fedunlearn and its test dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -e "$FMNIST/train-images-idx3-ubyte.gz" ] && [ ! -e "$FMNIST/train-images-idx3-ubyte" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing Debian's dataset-fashion-mnist (real Fashion-MNIST, no download at run time)"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    cat >&2 <<'MSG'
apt-get is not available, so Fashion-MNIST could not be installed. Either:
  - download the four IDX files from https://github.com/zalandoresearch/fashion-mnist (data/fashion)
    into a folder and run with --set data.data_dir=/that/folder, or
  - run on the embedded scikit-learn digits instead: --set data.name=digits
Continuing with the Python install.
MSG
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch and torchvision must be a matching pair. On Linux x86_64, PyPI's torch is the CUDA build
# (about 4 GB of CUDA and triton wheels, used on the CPU when there is no GPU). The CPU-only pair
# lives only on PyTorch's own index: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash
# scripts/setup.sh installs it from there (or .../whl/cu126 etc. for a given CUDA version). A CPU
# torch from elsewhere beside PyPI's torchvision fails at import ("operator torchvision::nms does
# not exist"), so both always come from the same index.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  echo "installing torch and torchvision from $TORCH_INDEX_URL"
  .venv/bin/pip install -q torch torchvision --index-url "$TORCH_INDEX_URL"
elif [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] && ! command -v nvidia-smi >/dev/null 2>&1 \
     && ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  cat <<'MSG'
note: no GPU found, but PyPI only has the CUDA build of torch for Linux x86_64 (about 4 GB more on
disk; it runs on the CPU). Continuing with it. For the CPU-only pair (about 1 GB) instead, where
download.pytorch.org is reachable:
  rm -rf .venv && TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
MSG
fi
.venv/bin/pip install -q -e ".[cluster,test]"
.venv/bin/python -c "import torchvision.ops, ray, flwr, fedunlearn; print('fedunlearn', fedunlearn.__version__, 'ready')"
echo "activate it once per shell with: source .venv/bin/activate   (or call .venv/bin/fedunlearn directly)"
