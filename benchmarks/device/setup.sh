# Sourced THERE by check.sh, concurrency.sh and anchor.sh (the lent GPU machine, .device carried): from this
# checkout's root, makes $out ($OUT, else /tmp/tiedlab-device-out), installs the carried wheels and this checkout
# into /tmp/site and exports what they run with; sets $repo to the checkout and leaves the shell in /tmp, so that
# tiedlab is imported from /tmp/site, as installed. Exits 2 in one line without .device/whl (prepare.sh makes it),
# 3 when an install fails; writes the GPU's name to $out/device.txt. $1: the calling script's name, for that line.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out="${OUT:-/tmp/tiedlab-device-out}"
mkdir -p "$out"
[ -d .device/whl ] || {
  echo "$1: no .device/whl: run benchmarks/device/prepare.sh here and carry .device" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .device/whl/*.whl || exit 3
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/site . \
  || exit 3  # --upgrade: on a warm machine /tmp/site already holds an earlier call's checkout, which pip would keep
# which GPU the files came from (a call that names no kind may land on another one)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  > "$out/device.txt"
export PYTHONPATH=/tmp/site PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1 TIEDLAB_DATA="$PWD/.device/data" \
  HF_HUB_OFFLINE=1 WANDB_MODE=disabled
repo="$PWD"
cd /tmp || exit 3
