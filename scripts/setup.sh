#!/usr/bin/env bash
# One-time set-up on a fresh machine: Fashion-MNIST (Debian package), a virtual environment,
# PyTorch 2.14.1 + torchvision 0.29.1, and rdd with its test and TensorBoard extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST is not installed; run 'sudo apt-get install dataset-fashion-mnist'" \
         "(without it rdd falls back to torchvision's download)" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
fi
"$VENV/bin/pip" install -q -e ".[test,tensorboard]"
echo "setup: ready ($VENV)"
