#!/usr/bin/env bash
# Run THERE (the lent GPU machine, .device carried, like check.sh): runs at once on one GPU
# (benchmarks/gpu_concurrency.py) for the paper-size tied and DEQ vision cells and the SimCLR DEQ cell (the DEQ
# cells are half the paper study's cost), into $OUT. Each part has its own limit (VISION_S, VISION_DEQ_S, SSL_DEQ_S,
# seconds; about 9 minutes in all) and writes its JSON after each level, so a part stopped by its limit keeps those.
# EXTRA_ARGS are appended to each part's arguments (a CPU rehearsal: EXTRA_ARGS="--tiny --device cpu --steps 6").
set -uo pipefail
source "$(dirname "$0")/setup.sh" concurrency.sh  # installs; sets $out and $repo; leaves us in /tmp
part() {  # LIMIT NAME ARGS...: one gpu_concurrency.py call, its JSON $out/NAME.json; all its output (the runs'
  # progress lines too) appended to concurrency-runs.log, the rest to concurrency.log and the terminal
  local limit="$1" name="$2"; shift 2
  timeout "$limit" python3 "$repo/benchmarks/gpu_concurrency.py" "$@" ${EXTRA_ARGS:-} --out "$out/$name.json" 2>&1 \
    | tee -a "$out/concurrency-runs.log" | grep -v '^\[tiedlab\]' | tee -a "$out/concurrency.log"
}
part "${VISION_S:-150}" vision-tied-concurrency --paradigm vision --block tied --runs 1,4 --steps 300
part "${VISION_DEQ_S:-170}" vision-deq-concurrency --paradigm vision --block deq --runs 1,4 --steps 60
part "${SSL_DEQ_S:-190}" ssl-deq-concurrency --paradigm ssl --block deq --runs 1,2 --steps 30
ls -la "$out"
