#!/bin/bash
# The retired ablation runner (benchmarks/ablation.py at d00a962) and the grid's `ablation` preset
# on one tiny identical setting: pipc 10, seed 0, four variants, 5 iterations, 20 evaluation epochs,
# 2 evaluation runs, the packaged edge model, one thread. Run from the repository root.
set -eu
export OMP_NUM_THREADS=1
OUT=${1:-/tmp/equiv}
EDGE=dkkt_plugin/assets/fmnist_edge.pt
mkdir -p "$OUT/old-src"
git archive d00a962 | tar x -C "$OUT/old-src"
(cd "$OUT/old-src" && python -m benchmarks.ablation run --edge-model $EDGE --split val --pipc 10 --seeds 0 \
    --variants dm,dkkt_default,paper_l1,dsv_noise --iterations 5 --eval-epochs 20 --num-eval 2 --out "$OUT/old")
python -m benchmarks.run --preset ablation --edge-model $EDGE --pipc 10 --seeds 0 \
    --columns dm dkkt_default paper_l1 dsv_noise --iterations 5 --eval-epochs 20 --threads 1 --out "$OUT/new" --no-report
