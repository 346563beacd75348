#!/usr/bin/env bash
# On a machine with a GPU: Triton-vs-reference numerics on CUDA (no interpreter), the gpu-marked tests, then the
# benchmark.
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
# the gpu-marked tests (attention fp16/bf16 forward + backward, PoNet under torch.compile); skipped ones fail here
set +e
$PY -m pytest -q -p no:cacheprovider -m gpu -rs --junitxml "$DEST/gpu_tests.xml" tests/kernels 2>&1 | tee "$DEST/gpu_tests.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
set -e
if grep -q "SKIPPED" "$DEST/gpu_tests.txt"; then echo "FAIL gpu-marked tests were skipped on a GPU machine"; status=1; fi
$PY -m kernels.bench --json "$DEST/bench_kernels.json" "$@" || status=$?
exit $status
