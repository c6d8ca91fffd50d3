#!/bin/sh
# The speed comparisons at the paper configuration on a lent GPU machine: one call, one table, under 8 minutes.
# Needs the project installed (make venv); results in benchmarks/results/gpu.json.
set -e
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" benchmarks/gpu.py "$@"
