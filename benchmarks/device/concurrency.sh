#!/usr/bin/env bash
# Run THERE (the lent GPU machine, .device carried, like check.sh): runs at once on one GPU
# (benchmarks/gpu_concurrency.py) for the paper-size vision and SimCLR tied cells, into $OUT. VISION_S and SSL_S
# limit the two parts (seconds); each JSON is written after each level, so a part stopped by its limit keeps those.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-/tmp/tiedlab-device-out}"
mkdir -p "$out"
[ -d .device/whl ] || { echo "concurrency.sh: no .device/whl: run benchmarks/device/prepare.sh here and carry .device" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl \
  || exit 3
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 3
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TIEDLAB_DATA="$PWD/.device/data" HF_HUB_OFFLINE=1 WANDB_MODE=disabled
repo="$PWD"
cd /tmp
timeout "${VISION_S:-150}" python3 "$repo/benchmarks/gpu_concurrency.py" --paradigm vision --runs 1,4 --steps 300 \
  --out "$out/vision-concurrency.json" 2>&1 | tee "$out/concurrency.log"
timeout "${SSL_S:-150}" python3 "$repo/benchmarks/gpu_concurrency.py" --paradigm ssl --runs 1,3 --steps 120 \
  --out "$out/ssl-concurrency.json" 2>&1 | tee -a "$out/concurrency.log"
ls -la "$out"
