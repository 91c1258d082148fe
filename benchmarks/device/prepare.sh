#!/usr/bin/env bash
# Run HERE (the CPU machine), once per checkout: put into .device/ (ignored by git, carried to the GPU machine) what
# the lent GPU machine lacks to run benchmarks/device/check.sh: wheels of the packages its image does not hold
# (hydra-core, omegaconf, antlr4-python3-runtime, lightly: the versions of requirements.txt; its torch, torchvision,
# torch-geometric and transformers are used as they are) and the datasets gpu_check.py reads (CIFAR-10, MNIST,
# Planetoid, tiny-shakespeare: 32 MB, with the data root's SHA256SUMS so that they are checked there too; a call
# carries at most 64 MiB with the working tree).
#   bash benchmarks/device/prepare.sh            # then the device tool: run(command="bash benchmarks/device/check.sh",
#                                                #   carry=[".device"], timeout_s=590)
set -euo pipefail
cd "$(dirname "$0")/../.."
data="${TIEDLAB_DATA:-../shared/data}"
[ -f "$data/SHA256SUMS" ] || { echo "prepare.sh: no datasets at $data (set TIEDLAB_DATA)" >&2; exit 2; }
grep -qxF "/.device/" .git/info/exclude 2>/dev/null || echo "/.device/" >> .git/info/exclude
rm -rf .device && mkdir -p .device/whl .device/data
pin() { grep -E "^$1==" requirements.txt | head -n1; }
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for req in "$(pin hydra-core)" "$(pin omegaconf)" "$(pin lightly)"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .device/whl "$req"
done
# antlr4-python3-runtime 4.9.3 (what hydra-core 1.3 needs) is published as a source archive only: build its wheel here
python3 -m pip wheel -q --no-deps -w .device/whl "antlr4-python3-runtime==4.9.3"
for d in cifar10-jpeg mnist planetoid tinyshakespeare; do cp -r "$data/$d" .device/data/; done
chmod -R u+w .device  # the shared copies are read-only: let the next prepare.sh remove these
cp "$data/SHA256SUMS" .device/data/
du -sh .device/whl .device/data
ls .device/whl
