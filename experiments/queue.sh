#!/usr/bin/env bash
# #13 experiments, resumable. Ordered so the goal comparisons (full, diffres-0.5/0.75,
# avgpool-0.75) get their seeds first, then one seed of the costly 1 ms run (a goal not yet
# measured), then the remaining seeds. THREADS=1 when another training job shares the
# machine (default 0: every core).
cd "$(dirname "$0")/.."  # the repository root
run() {  # seed config...
  local seed=$1; shift
  nice -n 10 .venv/bin/python -m service.train.experiments --data data/kws12 --out experiments/kws12-bc \
    --classifier bcresnet --epochs 20 --seeds "$seed" --threads "${THREADS:-0}" \
    --docs runs/docs-draft --only "$@" || exit 1
}
run 0 avgpool-0.5 changehopsize-0.75
run 1 diffres-0.5 diffres-0.75 avgpool-0.75
run 2 diffres-0.5 diffres-0.75 avgpool-0.75
run 1 full
run 2 full
run 0 diffres-1ms-0.9
run 1 avgpool-0.5 changehopsize-0.75
run 2 avgpool-0.5 changehopsize-0.75
run 1 diffres-1ms-0.9
run 2 diffres-1ms-0.9
