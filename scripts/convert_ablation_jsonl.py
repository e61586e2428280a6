"""Convert the retired ``benchmarks.ablation`` runner's JSONL into the grid's results format.

The ablation is now the ``ablation`` preset of ``python -m benchmarks.run``; its committed
results were written by the old runner (one line per variant, pipc and seed). This rewrites each
line as a grid record of that preset (same accuracies, seeds, command, date; column = variant)
so that ``benchmarks.run`` skips those cells and ``benchmarks.report`` reads them::

    git show d00a962:benchmarks/results/ablation/ablation-val.jsonl > /tmp/ablation-val.jsonl
    python scripts/convert_ablation_jsonl.py /tmp/ablation-val.jsonl --out benchmarks/results/ablation/results.jsonl

What the old runner did not record stays empty (``null``): the full distillation config (only
the variant's overrides were stored: kept as ``overrides``), the torch / package versions, the
split of the wall time between distillation and evaluation (its total is ``seconds``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` from this checkout

from benchmarks.grid import FORMAT, record_key  # noqa: E402
from benchmarks.presets import ABLATION  # noqa: E402

TRAIN_IMAGES = 60000  # Fashion-MNIST's training set: the old lines are all Fashion-MNIST


def convert(line: dict, preset: str = ABLATION.name) -> dict:
    """One old ablation line -> one grid record of the ``ablation`` preset (or of ``preset``, its
    name with the runner's flags, e.g. ``ablation[iterations=1000]``)."""
    accuracies = [float(a) for a in line["accuracies"]]
    mean = sum(accuracies) / len(accuracies)
    std = (sum((a - mean) ** 2 for a in accuracies) / len(accuracies)) ** 0.5
    pipc = line["pipc"]
    return {
        "format": FORMAT, "dataset": "fashion_mnist", "preset": preset, "column": line["variant"],
        "ipc": line.get("ipc", 1), "pipc": pipc, "access_ratio": 100.0 * 10 * pipc / TRAIN_IMAGES, "seed": line["seed"],
        "split": line["split"], "method": line["method"], "config": None, "overrides": line["overrides"],
        "accuracies": accuracies, "mean": line["accuracy"], "std_eval": std, "eval_protocol": line["protocol"],
        "eval_seeds": [line["seed"] + r for r in range(len(accuracies))], "eval_seconds": None,
        "distill_seconds": None, "seconds_per_iteration": None, "seconds": line["seconds"],
        "iterations": line["iterations"], "final": line["final"], "fidelity": line.get("fidelity"), "resumed": None,
        "run_dir": f"runs/{line['split']}/{line['variant']}-{pipc}-{line['seed']}",
        "preset_label": ABLATION.label, "cpu_sized": True, "versions": None, "device": "cpu",
        "machine": line["machine"], "date": line["date"], "command": line["command"],
        "edge_model": {"path": line["edge_model"], "test_accuracy": line["edge_test_accuracy"], "config": None},
        "converted_from": "benchmarks.ablation JSONL (scripts/convert_ablation_jsonl.py)",
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (2 on a clear error)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="the old runner's ablation-<split>.jsonl")
    p.add_argument("--out", required=True, help="the grid results file to write (overwritten)")
    p.add_argument("--preset", default=ABLATION.name,
                   help="the preset name the lines belong to (the runner's flags: ablation[iterations=1000])")
    args = p.parse_args(argv)
    try:
        lines = [json.loads(s) for s in Path(args.source).read_text(encoding="utf-8").splitlines() if s.strip()]
        records = [convert(line, args.preset) for line in lines]
    except (OSError, ValueError, KeyError) as exc:
        print(f"convert_ablation_jsonl: error: {args.source}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if len({record_key(r) for r in records}) != len(records):
        print(f"convert_ablation_jsonl: error: {args.source} holds a variant/pipc/seed twice", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    print(f"converted {len(records)} line(s): {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
