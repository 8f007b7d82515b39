#!/usr/bin/env bash
# Wheels the lent GPU machine lacks (it has torch, numpy, pandas, pyarrow, numba, transformers
# 5.17, no network): transformer-lens and what it imports that the machine's image does not
# hold, at this checkout's versions, plus the stats stage's UMAP. Run here, from the repository
# root; they land in .whl/ (git-ignored locally), which the device call carries.
# WHEEL_DIR and WHEEL_PYTHON (default .whl and 3.12, the device's Python) let
# benchmarks/gpu_dry_run.sh fetch the same set for this machine's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PY:-.venv/bin/python}
DIR=${WHEEL_DIR:-.whl}
names="transformer-lens transformers huggingface-hub tokenizers datasets dill multiprocess kernels
       truststore beartype typeguard fancy-einsum umap-learn pynndescent httpx2 httpcore2"
mkdir -p "$DIR"
for name in $names; do
  version=$($PY -m pip show "$name" 2>/dev/null | awk '/^Version:/{print $2}')
  [ -n "$version" ] || { echo "skip $name (not installed here)"; continue; }
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DIR" "$name==$version" || echo "no wheel for $name==$version"
done
du -sh "$DIR"
