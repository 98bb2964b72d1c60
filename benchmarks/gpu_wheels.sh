#!/usr/bin/env bash
# Prepares .gpu-bundle/ (git-ignored), which travels to the GPU machine with the working tree (64 MiB at most, no
# network there). The machine's image has CUDA PyTorch, accelerate, tokenizers, safetensors, pandas, pyarrow,
# triton and ninja, but not TRL, PEFT, datasets or exllamav2, and another transformers; Dagster is not needed.
#   wheels/        pure-Python wheels of the versions this checkout's venv runs (the CPU dry run tests them), and
#                  exllamav2 (the `gpu` extra; it compiles its CUDA extension there, on first import)
#   datasets-new/  the datasets this venv runs (needs pyarrow >= 24); datasets-old/: TRL's minimum (pyarrow >= 21):
#                  gpu_run.sh installs the one the machine's pyarrow supports
#   tokenizer/, items.jsonl   SmolLM2's tokenizer and the sample news texts (`benchmarks/gpu.py --bundle`)
# Then run, with the device tool: command "bash benchmarks/gpu_run.sh", carry [".gpu-bundle"] (README, Benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=.gpu-bundle
PY=${PY:-.venv/bin/python}
EXLLAMAV2=0.3.2

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

download() {  # download FOLDER NAME==VERSION...: wheels for the GPU machine's CPython 3.12 on x86-64 Linux
  local folder=$1
  shift
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$folder" "$@"
}

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"
download "$BUNDLE/wheels" "transformers==$(version transformers)" "trl==$(version trl)" "peft==$(version peft)" \
  "regex==$(version regex)" "dill==$(version dill)" "multiprocess==$(version multiprocess)" "exllamav2==$EXLLAMAV2"
download "$BUNDLE/datasets-new" "datasets==$(version datasets)"
download "$BUNDLE/datasets-old" "datasets==4.7.0"
"$PY" benchmarks/gpu.py --bundle
du -sh "$BUNDLE"
