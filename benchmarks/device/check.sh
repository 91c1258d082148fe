#!/usr/bin/env bash
# Run THERE (the lent GPU machine, through the device tool, with .device carried; benchmarks/device/prepare.sh makes
# it): installs the carried wheels and this checkout, then the two GPU measurements, each under its own time limit,
# into $OUT: gpu_check.json (per paradigm at the paper sizes: step time, samples/s, memory, vision MFU, channels-last,
# time to accuracy, seed batching) and study-step-times.json (every cell of the paper study, for
# `tiedlab-study paper --plan --step-times study-step-times.json`; written after each cell, so a run stopped by its
# limit keeps the cells it measured), with their logs. CHECK_S and STUDY_S set the two limits (seconds).
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-/tmp/tiedlab-device-out}"
mkdir -p "$out"
[ -d .device/whl ] || { echo "check.sh: no .device/whl: run benchmarks/device/prepare.sh here and carry .device" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl \
  || exit 3
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 3
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TIEDLAB_DATA="$PWD/.device/data" HF_HUB_OFFLINE=1 WANDB_MODE=disabled
repo="$PWD"
cd /tmp  # tiedlab is imported from /tmp/site, as installed
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python3 -c "import torch, transformers, torch_geometric as g; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'torch_geometric', g.__version__)" | tee -a "$out/device.txt"
# CHECK_ARGS / STUDY_ARGS replace the two commands' arguments (a CPU rehearsal of this script:
#   OUT=/tmp/o CHECK_ARGS="--tiny --device cpu --steps 2" STUDY_ARGS="--study demo --steps 3 --device cpu" bash ...)
timeout "${CHECK_S:-240}" python3 "$repo/benchmarks/gpu_check.py" ${CHECK_ARGS:-} --out "$out/gpu_check.json" 2>&1 \
  | tee "$out/gpu_check.log"
timeout "${STUDY_S:-270}" python3 "$repo/benchmarks/gpu_check.py" ${STUDY_ARGS:---study paper --steps 30} \
  --out "$out/study-step-times.json" 2>&1 | tee "$out/study-step-times.log"
ls -la "$out"
