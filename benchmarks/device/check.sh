#!/usr/bin/env bash
# Run THERE (the lent GPU machine, through the device tool, with .device carried; benchmarks/device/prepare.sh makes
# it): installs the carried wheels and this checkout, then the two GPU measurements, each under its own time limit,
# into $OUT: gpu_check.json (per paradigm at the paper sizes: step time, samples/s, memory, vision MFU, channels-last,
# time to accuracy, seed batching) and study-step-times.json (every cell of the paper study, for
# `tiedlab-study paper --plan --step-times study-step-times.json`; written after each cell, so a run stopped by its
# limit keeps the cells it measured), with their logs. CHECK_S and STUDY_S set the two limits (seconds).
set -uo pipefail
source "$(dirname "$0")/setup.sh" check.sh  # installs; sets $out and $repo; leaves us in /tmp
cat "$out/device.txt" 2>/dev/null  # the GPU, written by setup.sh
python3 -c "import torch, transformers, torch_geometric as g; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'torch_geometric', g.__version__)" | tee -a "$out/device.txt"
# CHECK_ARGS / STUDY_ARGS replace the two commands' arguments (a CPU rehearsal of this script:
#   OUT=/tmp/o CHECK_ARGS="--tiny --device cpu --steps 2" STUDY_ARGS="--study demo --steps 3 --device cpu" bash ...)
timeout "${CHECK_S:-240}" python3 "$repo/benchmarks/gpu_check.py" ${CHECK_ARGS:-} --out "$out/gpu_check.json" 2>&1 \
  | tee "$out/gpu_check.log"
timeout "${STUDY_S:-270}" python3 "$repo/benchmarks/gpu_check.py" ${STUDY_ARGS:---study paper --steps 30} \
  --out "$out/study-step-times.json" 2>&1 | tee "$out/study-step-times.log"
ls -la "$out"
