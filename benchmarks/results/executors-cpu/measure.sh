#!/bin/bash
# Wall time of the grid run three ways (issue 13): one process (1 and 2 torch threads) and
# `--executor local --workers 2` (1 thread per worker), on the smoke preset and on a small subset of
# the cpu preset. Run from the repository root: benchmarks/results/executors-cpu/measure.sh [OUT]
# Appends to OUT/times.txt the command, date, `uptime` before and after, exit status and wall seconds.
set -u
PY=${PYTHON:-python}
M=${1:-/tmp/bench-measure}
mkdir -p "$M"
export OMP_NUM_THREADS=1
lscpu | grep -E "Model name|^CPU\(s\)|Thread" > "$M/lscpu.txt"
$PY -m benchmarks.run --preset smoke --pretrain-only --threads 2 --out "$M/smoke-edge" > "$M/smoke-edge.log" 2>&1
timed() {  # name, command...
  local name=$1; shift
  echo "== $name" >> "$M/times.txt"
  echo "cmd: $*" >> "$M/times.txt"
  echo "date: $(date -u +%FT%TZ)  before: $(uptime)" >> "$M/times.txt"
  local t0=$(date +%s.%N)
  "$@" > "$M/$name.log" 2>&1
  local rc=$?
  local t1=$(date +%s.%N)
  echo "rc: $rc  wall_s: $(echo "$t1 - $t0" | bc)  after: $(uptime)" >> "$M/times.txt"
}
SMOKE="--preset smoke --edge-model $M/smoke-edge/edge_model.pt --no-report"
timed smoke-process1 $PY -m benchmarks.run $SMOKE --threads 1 --out "$M/smoke-process1"
timed smoke-local2 $PY -m benchmarks.run $SMOKE --executor local --workers 2 --out "$M/smoke-local2"
timed smoke-process2t $PY -m benchmarks.run $SMOKE --threads 2 --out "$M/smoke-process2t"
CPU="--preset cpu --edge-model dkkt_plugin/assets/fmnist_edge.pt --ipc 1 --pipc 10 --seeds 0 --columns dm dc dsv_noise --no-report"
timed cpu-process1 $PY -m benchmarks.run $CPU --threads 1 --out "$M/cpu-process1"
timed cpu-local2 $PY -m benchmarks.run $CPU --executor local --workers 2 --out "$M/cpu-local2"
timed cpu-process2t $PY -m benchmarks.run $CPU --threads 2 --out "$M/cpu-process2t"
echo done >> "$M/times.txt"
