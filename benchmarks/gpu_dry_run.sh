#!/usr/bin/env bash
# Before spending a lent GPU's minutes: benchmarks/gpu_check.py's CPU dry run inside an
# environment shaped like that machine's image, so a module the image lacks (or an API its
# older torch lacks) fails here rather than in the one device call a session gets.
# The environment holds only the image's packages that the pipelines and transformer-lens
# touch (the image's list: the device tool's KINDS.md, 2026-11-17) and the wheels
# benchmarks/gpu_wheels.sh carries, installed with --target as gpu_check.sh installs them.
#   bash benchmarks/gpu_dry_run.sh                 # torch 2.13.0 (the project's pin)
#   TORCH=2.11.0 bash benchmarks/gpu_dry_run.sh    # the device image's torch (a 3 GB download)
# Exits non-zero when a section of the check failed; the report is /tmp/gpu_dry_run.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=${DRY_ENV:-/tmp/gpu_dry_env}
start=$(date +%s)
python3 -m venv --clear "$ENV"
image_packages="accelerate einops filelock fsspec hf-xet httpx jaxtyping jinja2 joblib networkx
  numba numpy packaging pandas pillow protobuf psutil pyarrow pytest pyyaml regex requests rich
  safetensors scikit-learn scipy sentencepiece sympy tqdm typer typing-extensions xxhash"
"$ENV/bin/pip" install -q "torch==${TORCH:-2.13.0}" $image_packages
python_version=$("$ENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
WHEEL_DIR="$ENV/whl" WHEEL_PYTHON="$python_version" bash benchmarks/gpu_wheels.sh
"$ENV/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$ENV/site" "$ENV"/whl/*.whl
report=/tmp/gpu_dry_run.md
rm -rf /tmp/gpu_dry_run  # every stage from scratch, as on the bare device
PYTHONPATH="$ENV/site" "$ENV/bin/python" benchmarks/gpu_check.py --device cpu --quick \
  --budget 800 --out "$report" --work /tmp/gpu_dry_run
if grep -q '^FAILED' "$report"; then
  echo "gpu dry run: a section FAILED (torch $("$ENV/bin/python" -c 'import torch; print(torch.__version__)'), $report)"
  exit 1
fi
echo "gpu dry run: every section ran (torch $("$ENV/bin/python" -c 'import torch; print(torch.__version__)')), $(( $(date +%s) - start )) s -> $report"
