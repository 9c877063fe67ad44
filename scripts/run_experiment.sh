#!/usr/bin/env bash
# Reproduce the MNIST-sum experiment from a fresh clone: create .venv, install the
# package, prepare the verified MNIST files, train with the default recipe, then
# reload the checkpoint and evaluate it on the 10,000 test images.
#
# Environment: DATA (default: data), OUT (default: runs/default), PYTHON (default: python3);
# extra arguments go to `mnist-fusion train`, e.g. --seed 1 or --device cuda.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-data}
OUT=${OUT:-runs/default}
PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt .

.venv/bin/mnist-fusion prepare-data --root "$DATA"
.venv/bin/mnist-fusion train --root "$DATA" --out "$OUT" "$@"
.venv/bin/mnist-fusion evaluate --root "$DATA" --checkpoint "$OUT/model.pt" \
    --metrics-out "$OUT/evaluate.json"
