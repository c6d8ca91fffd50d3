#!/bin/sh
# The speed comparisons at the paper configuration on a lent GPU machine: one call, one table, under 8 minutes.
# Needs the project installed (make venv); results in benchmarks/results/gpu.json. On a machine with several
# GPUs it then times `diffheads generate` on one GPU against all of them (benchmarks/results/generation_scaling_gpu.json).
set -e
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
"$PY" benchmarks/gpu.py "$@"
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "${GPUS:-0}" -gt 1 ]; then
    "$PY" benchmarks/generation_scaling.py --device cuda --devices "$GPUS" --config crema --size 128 \
        --clips $((8 * GPUS)) --seconds 2 --steps 20 --batch-size 8 --rounds 1 \
        --json benchmarks/results/generation_scaling_gpu.json
else
    echo "gpu.sh: one GPU here; the multi-GPU generation run (benchmarks/generation_scaling.py --device cuda) needs several"
fi
