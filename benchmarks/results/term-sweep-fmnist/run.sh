#!/usr/bin/env bash
# the term-sweep preset from a pinned worktree, nice'd, one 1-thread process; resumable (rerun)
cd /work/term-wt
export OMP_NUM_THREADS=1 PYTHONPATH=/work/term-wt
exec nice -n 19 /work/venv/bin/python -m benchmarks.run --preset term-sweep --dataset fashion_mnist \
  --out /work/term-out --threads 1 "$@"
