#!/usr/bin/env bash
# Run the whole benchmark on a CUDA machine, with bf16 autocast and channels_last, and
# write benchmarks/results/results-gpu.json and results-gpu.md. Each recipe's training
# clock is capped at BUDGET seconds, so the run is expected to take under five minutes.
#
# Environment: ROOT (default: data, the folder that contains MNIST/raw), PYTHON (default:
# python3), BUDGET (default: 60). Extra arguments go to run.py, e.g. --compile.
# NOTE: not yet run on a GPU; the five-minute figure is an estimate.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${ROOT:-data}
PYTHON=${PYTHON:-python3}
BUDGET=${BUDGET:-60}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "CUDA is not available; run benchmarks/run.py --device cpu instead.")'
started=$SECONDS
"$PYTHON" benchmarks/run.py --root "$ROOT" --out benchmarks/results --name results-gpu \
    --device cuda --budget-seconds "$BUDGET" "$@"
echo "run_gpu.sh: finished in $((SECONDS - started)) s" >&2
