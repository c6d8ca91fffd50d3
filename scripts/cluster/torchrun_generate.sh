#!/bin/bash
# Generate on several machines without SLURM: run this on every machine, with its own NODE_RANK.
#   MASTER_ADDR=10.0.0.1 NODE_RANK=0 NNODES=2 GPUS=8 scripts/cluster/torchrun_generate.sh runs/crema/model.ckpt data/crema outputs/crema-test
#   MASTER_ADDR=10.0.0.1 NODE_RANK=1 NNODES=2 GPUS=8 scripts/cluster/torchrun_generate.sh runs/crema/model.ckpt data/crema outputs/crema-test
# (the same for `diffheads train` and `diffheads evaluate`: replace the command after -m diffheads.cli).
# DATA and OUT must be on storage every machine sees.
set -euo pipefail
CHECKPOINT=$1
DATA=$2
OUT=$3
shift 3
exec torchrun --nnodes "${NNODES:-1}" --nproc-per-node "${GPUS:-1}" --node-rank "${NODE_RANK:-0}" \
    --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
    -m diffheads.cli generate --checkpoint "$CHECKPOINT" --data "$DATA" --out "$OUT" --device cuda --quiet "$@"
