#!/usr/bin/env bash
# The checks that need a GPU: every CUDA-marked test (pytest -m cuda) and a short speed benchmark
# on the device, with the device's description, written to one results folder.
#
#   scripts/gpu_check.sh [OUT]     (default OUT: benchmarks/results/gpu-check)
#
# PYTHON selects the interpreter (default: python). The exit status is pytest's (0: all passed);
# the benchmark runs either way, and its own failure is reported at the end.
set -uo pipefail

out="${1:-benchmarks/results/gpu-check}"
python="${PYTHON:-python}"
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$out"

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "",
      "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())'
} > "$out/device.txt" 2>&1
cat "$out/device.txt"

# the CUDA tests fail (not skip) here when no CUDA device is visible: this script is for a GPU
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device visible to torch (see $out/device.txt)" | tee "$out/pytest-cuda.txt"
  exit 2
fi

"$python" -m pytest -m cuda -v -rs -p no:cacheprovider tests 2>&1 | tee "$out/pytest-cuda.txt"
tests_status=${PIPESTATUS[0]}

"$python" -m benchmarks.speed --device cuda --ipc 1 10 --threads 1 --rounds 3 --eval-epochs 2 \
  --variants reference dm dm_fp32 dm_torch dm_dkkt dm_dkkt_fp32 \
  --eval-variants eval_reference eval eval_fp32 --out "$out/speed" 2>&1 | tee "$out/speed.log"
speed_status=${PIPESTATUS[0]}

echo "gpu_check: pytest -m cuda exit $tests_status, benchmarks.speed exit $speed_status; output in $out"
[ "$speed_status" -eq 0 ] || echo "gpu_check: the speed benchmark failed (see $out/speed.log)"
exit "$tests_status"
