#!/usr/bin/env bash
# The GPU check in one device call (issue 27): installs what that machine lacks from wheels
# carried in .whl/ (fetch them here first with benchmarks/gpu_wheels.sh), then runs
# benchmarks/gpu_check.py, which writes benchmarks/results_gpu.md section by section and
# copies it to $OUT. From the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode --format=csv,noheader 2>/dev/null || true
python3 benchmarks/gpu_check.py --budget "${GPU_CHECK_BUDGET:-450}" "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"
