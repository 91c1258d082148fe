#!/usr/bin/env bash
# Run THERE (the lent GPU machine, .device carried, like check.sh): the MDEQ-tiny-style anchor of the DEQ issue at
# its GPU size (configs/experiment/vision_mdeq_anchor.yaml: full CIFAR-10 at 32x32, width 64, batch 128), the DEQ
# and its weight-tied twin side by side on the one GPU, seed 0, EPOCHS epochs (default 4: 1,500 steps of 128 of the
# 48,000 training images, which the DEQ finishes within LIMIT_S at up to 280 ms a step, so that both arms train
# the same schedule to its end; the H200 measured ~170 ms with its solves then in bf16), each under LIMIT_S seconds
# of training (train.time_limit_s, a safety stop: a run stopped by it still evaluates and says so, and its
# accuracy is then not comparable). Brings back each arm's metrics.json and history.jsonl and the log, into $OUT,
# and the DEQ's gradient check re-probed in float32 (anchor-reprobe.jsonl).
# EXTRA is appended to both arms' overrides (a CPU rehearsal: EXTRA="train.device=cpu data.limit_train=256 ...").
set -uo pipefail
source "$(dirname "$0")/setup.sh" anchor.sh  # installs; sets $out and $repo; leaves us in /tmp
rm -rf /tmp/anchor
for block in tied deq; do
  # shellcheck disable=SC2086  # EXTRA is a list of overrides
  tiedlab-vision experiment=vision_mdeq_anchor "block=$block" seed=0 data.limit_train=null model.stem_stride=1 \
    model.width=64 train.max_steps=null "train.epochs=${EPOCHS:-4}" train.batch_size=128 train.device=cuda \
    train.eval_every=500 train.threads=8 "train.time_limit_s=${LIMIT_S:-420}" train.progress=false \
    "run_dir=/tmp/anchor/$block" ${EXTRA:-} > "$out/anchor-$block.log" 2>&1 &
done
wait
for block in tied deq; do
  for f in metrics.json history.jsonl; do cp "/tmp/anchor/$block/$f" "$out/anchor-$block-$f" 2>/dev/null; done
  tail -n 4 "$out/anchor-$block.log"
done
# the DEQ's gradient check again on its final weights in float32 ("recorded" is the run's own, under bf16 autocast
# around the block): a cosine that passes only in float32 flags bf16, not the solve (README: "A DEQ's gradient check
# then compares ..."); REPROBE_S bounds it
timeout "${REPROBE_S:-120}" python3 "$repo/benchmarks/reprobe.py" /tmp/anchor/deq --threads 8 --set train.amp=false \
  2>"$out/anchor-reprobe.log" | tee "$out/anchor-reprobe.jsonl"
ls -la "$out"
