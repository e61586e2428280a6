#!/usr/bin/env bash
# Start (or resume) the `reproduce` budget campaign in the background, from a pinned checkout.
#
#   scripts/campaign.sh start    # worktree + venv at the pinned commit, OUT restored from the
#                                # repository's copy when missing, then two nice'd 1-thread workers
#   scripts/campaign.sh pause    # SIGSTOP the campaign's process group (before timing anything)
#   scripts/campaign.sh resume   # SIGCONT it
#   scripts/campaign.sh stop     # SIGKILL it (submitit's workers outlive a SIGTERM); each running
#                                # distillation loses at most one checkpoint interval
#   scripts/campaign.sh sync     # copy OUT (without submitit's files) into the results folder
#   scripts/campaign.sh status   # cells done / running / pending, and how far each run is
#
# Settings (environment): COMMIT (the pinned commit, default the one the results README names),
# WORKTREE (../campaign), VENV (../campaign-venv), OUT (../campaign-out).
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
results="$repo/benchmarks/results/reproduce-fmnist"
COMMIT=${COMMIT:-$(grep -o 'commit `[0-9a-f]\{7,\}`' "$results/README.md" | head -1 | tr -dc '0-9a-f\n' | tail -c 8)}
WORKTREE=${WORKTREE:-$repo/../campaign}
VENV=${VENV:-$repo/../campaign-venv}
OUT=${OUT:-$repo/../campaign-out}
PGID_FILE="$OUT/campaign.pgid"
ARGS=(--preset reproduce --dataset fashion_mnist --out "$OUT")

case "${1:-}" in
start)
    [ -d "$WORKTREE" ] || git -C "$repo" worktree add -f "$WORKTREE" "$COMMIT"
    [ "$(git -C "$WORKTREE" rev-parse --short=7 HEAD)" = "${COMMIT:0:7}" ] || {
        echo "campaign.sh: $WORKTREE is not at $COMMIT; remove it or set WORKTREE" >&2; exit 2; }
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q torch==2.13.0 matplotlib psutil submitit
        "$VENV/bin/pip" install -q "$WORKTREE"
    fi
    if [ ! -f "$OUT/results.jsonl" ] && [ -f "$results/results.jsonl" ]; then
        mkdir -p "$OUT" && rsync -a --exclude README.md --exclude status.jsonl "$results/" "$OUT/"
    fi
    cd "$WORKTREE"
    OMP_NUM_THREADS=1 nohup setsid nice -n 19 "$VENV/bin/python" -m benchmarks.run "${ARGS[@]}" \
        --executor local --workers 2 --threads 1 >> "$OUT/campaign.log" 2>&1 &
    sleep 2
    ps -o pgid= -p $! | tr -d ' ' > "$PGID_FILE"
    # setsid puts the campaign in its own scheduler autogroup, where `nice` only ranks its own
    # processes against each other; the group's nice makes it yield to foreground work
    [ -w /proc/$!/autogroup ] && echo 19 > /proc/$!/autogroup
    echo "campaign started from $COMMIT, process group $(cat "$PGID_FILE"), log $OUT/campaign.log"
    ;;
pause) kill -STOP -"$(cat "$PGID_FILE")" ;;
resume) kill -CONT -"$(cat "$PGID_FILE")" ;;
stop) kill -KILL -"$(cat "$PGID_FILE")" ;;
sync) rsync -a --delete --exclude submitit/ --exclude '*.lock' --exclude campaign.pgid --exclude README.md \
          --exclude report.md --exclude report.json --exclude figures/ --exclude status.jsonl \
          "$OUT/" "$results/"
      # `start` leaves status.jsonl behind (its "running" lines name processes of another machine),
      # so OUT holds only this machine's lines: append those the results folder lacks
      if [ -f "$OUT/status.jsonl" ]; then
          touch "$results/status.jsonl"
          cat "$results/status.jsonl" "$OUT/status.jsonl" | awk '!seen[$0]++' > "$results/status.jsonl.tmp"
          mv "$results/status.jsonl.tmp" "$results/status.jsonl"
      fi ;;
status) cd "$WORKTREE" && "$VENV/bin/python" -m benchmarks.run status "${ARGS[@]}" ;;
*) sed -n 2,15p "$0"; exit 2 ;;
esac
