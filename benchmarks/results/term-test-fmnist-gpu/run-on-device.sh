#!/usr/bin/env bash
# term-test ipc 10 on the GPU: one process per (seed, host), each running host alone and host + DKKT.
set -u
cd "$(dirname "$0")/../../.."  # the repository root (it ran as .devrun/tt10.sh, one level down)
t0=$(date +%s)
OUT=${OUT:-/tmp/devout}; mkdir -p "$OUT"
np=$(nproc)
{ date -u +"%Y-%m-%dT%H:%M:%SZ"; git rev-parse HEAD; echo "nproc $np"; uptime; lscpu | grep -E 'Model name|CPU family|Model:';
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
if [ "$np" -lt 8 ]; then echo "only $np usable CPUs: not starting 15 processes"; exit 4; fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 DKKT_FASHION_MNIST_ROOT=$PWD/.fmnist OMP_NUM_THREADS=1
python3 -c 'import torch,sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())' >> "$OUT/machine.txt" 2>&1
tt=/tmp/term-test-gpu; mkdir -p "$tt"
limit=$(( ${TT_LIMIT:-520} - ($(date +%s) - t0) ))
echo "term-test ipc 10: $limit s left" | tee "$OUT/termtest.log"
declare -A DK=([dm]=dm_dkkt_grad [dc]=dc_dkkt [dsa]=dsa_dkkt)
for seed in 0 1 2 3 4; do for host in dm dc dsa; do
  timeout -s KILL "$limit" python3 -m benchmarks.run --preset term-test --dataset fashion_mnist --out "$tt" \
      --device cuda --threads 1 --no-report --ipc 10 --seeds $seed --columns $host ${DK[$host]} \
      > "$tt/log-ipc10-s$seed-$host.txt" 2>&1 &
done; done
while [ -n "$(jobs -r)" ]; do sleep 20; echo "$(( $(date +%s) - t0 )) s: $(wc -l < "$tt/results.jsonl" 2>/dev/null) results; $(uptime)" | tee -a "$OUT/termtest.log"; done
wait
echo "term-test done after $(( $(date +%s) - t0 )) s; $(wc -l < "$tt/results.jsonl" 2>/dev/null) result lines" | tee -a "$OUT/termtest.log"
uptime >> "$OUT/machine.txt"
cp "$tt/results.jsonl" "$tt/status.jsonl" "$OUT/" 2>/dev/null
tar czf "$OUT/termtest.tar.gz" -C /tmp term-test-gpu
ls -la "$OUT"
