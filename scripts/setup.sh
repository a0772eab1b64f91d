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
# torch and torchvision resolve together, so they are always a matching pair.
.venv/bin/pip install -q -e ".[cluster,test]"
.venv/bin/python -c "import torchvision.ops, ray, flwr, fedunlearn; print('fedunlearn', fedunlearn.__version__, 'ready')"
