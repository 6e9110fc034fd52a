#!/usr/bin/env bash
# Prepare the Python environment with the unmodified pytorch-fid package that tests/test_inception.py
# compares the JAX FID Inception network with, and print its python on stdout (everything else: stderr):
#
#   export NCSN_PYTORCH_FID_PYTHON="$(bash .ci/pytorch_fid_env.sh)"
#
# It is kept apart from the project's environment: pytorch-fid imports torchvision, whose only builds need
# a CUDA build of torch (about 3 GB of nvidia-* wheels, installed in about 2 minutes; it runs on the CPU),
# while the project pins the CPU torch. The venv lives outside the clone ($NCSN_FID_VENV, default
# ~/.cache/ncsn-jax/pytorch-fid-venv) and is reused while it imports; versions are pinned to those tested.
set -euo pipefail
venv="${NCSN_FID_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ncsn-jax/pytorch-fid-venv}"
requirements=("pytorch-fid==0.3.0" "torch==2.14.1" "torchvision==0.29.1" "numpy>=1.26")

works() {
  "$venv/bin/python" -c "import numpy, torch, torchvision, pytorch_fid.inception" >/dev/null 2>&1
}

if ! works; then
  if [ -e "$venv" ]; then
    if [ ! -f "$venv/pyvenv.cfg" ]; then
      echo "error: $venv exists and is not a virtual environment; set NCSN_FID_VENV elsewhere." >&2
      exit 1
    fi
    rm -rf "$venv"  # a broken or half-installed venv of ours
  fi
  mkdir -p "$(dirname "$venv")"
  echo "Installing pytorch-fid into $venv (torch with CUDA wheels, a few minutes)..." >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${requirements[@]}" >&2
  if ! works; then
    echo "error: pytorch-fid in $venv does not import:" >&2
    "$venv/bin/python" -c "import pytorch_fid.inception" >&2 || true
    exit 1
  fi
fi
echo "$venv/bin/python"
