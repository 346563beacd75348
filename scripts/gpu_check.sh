#!/usr/bin/env bash
# On a machine with a GPU: Triton-vs-reference numerics on CUDA (no interpreter), then the benchmark.
# Writes JSON under $OUT when set (the device runner collects it), else under out/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
DEST=${OUT:-out}
mkdir -p "$DEST"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$DEST/gpu.txt" || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$DEST/gpu.txt"
status=0
$PY -m kernels.gpu_check --json "$DEST/gpu_check.json" || status=$?
$PY -m kernels.bench --json "$DEST/bench_kernels.json" "$@" || status=$?
exit $status
