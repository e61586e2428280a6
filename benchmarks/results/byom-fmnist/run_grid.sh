#!/usr/bin/env bash
# usage: run_grid.sh EDGE_PATH OUT
set -euo pipefail
cd /work/byom-wt
export OMP_NUM_THREADS=1 PYTHONPATH=/work/byom-wt
exec /work/venv/bin/python -m benchmarks.run --preset cpu --dataset fashion_mnist --ipc 1 --pipc 10 \
  --columns ${COLUMNS:-dm_dkkt dsv_noise} --seeds 0 1 2 --eval-archs mlp lenet resnet18 --eval-epochs 1000 --eval-precision auto \
  --edge-model "$1" --transfer-model /work/byom-wt/dkkt_plugin/assets/fmnist_transfer.pt \
  --no-blend --threads 1 --out "$2"
