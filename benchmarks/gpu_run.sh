#!/usr/bin/env bash
# Runs on the GPU machine, in the repository root, with .gpu-bundle carried (benchmarks/gpu_wheels.sh makes it):
# installs the carried wheels into /tmp/site, runs benchmarks/gpu.py, and writes gpu.json and gpu.log into $OUT
# (which the device tool brings back; copy gpu.json to benchmarks/results/). Arguments go to gpu.py.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
BUNDLE=.gpu-bundle
mkdir -p "$OUT"
datasets=$BUNDLE/datasets-new
python3 -c 'import pyarrow, sys; sys.exit(int(pyarrow.__version__.split(".")[0]) < 24)' || datasets=$BUNDLE/datasets-old
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$BUNDLE"/wheels/*.whl "$datasets"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# exllamav2 compiles with ninja, which pip installed beside this python
PATH="$(dirname "$(python3 -c 'import sys; print(sys.executable)')"):$PATH"
export PATH
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  echo "datasets from $datasets"
} 2>&1 | tee "$OUT/gpu.log"
python3 benchmarks/gpu.py --out "$OUT/gpu.json" "$@" 2>&1 | tee -a "$OUT/gpu.log"
