"""DKKT ablation on Fashion-MNIST: DM vs DM+DKKT with each option on and off, plus DSV alone.

CPU-sized. Settings are chosen on a held-out VALIDATION split of the training set
(``--split val``: 200 images per class drawn with seed 999, disjoint from every practical subset
of seeds 0-4 at pipc <= 50); the test set is used only to report the chosen settings
(``--split test``). Results append to a JSONL file, one line per variant, pipc and seed; finished
lines are skipped on rerun, so the grid can be completed over several sittings.

    python -m benchmarks.ablation run --edge-model edge.pt --split val --pipc 10,50 --seeds 0,1,2
    python -m benchmarks.ablation report --results benchmarks/results/ablation/ablation-val.jsonl
    python -m benchmarks.ablation curves --out-dir benchmarks/results/ablation --split val --pipc 10
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

# name -> (method, config overrides). "dkkt_default" is DM+DKKT with the package defaults (cos
# distance, alpha 1, boundary primal, classifier parameters, log multipliers, noise init at ipc 1,
# image lr 1/beta); every other dm_dkkt variant switches one option away from them.
VARIANTS: dict[str, tuple[str, dict]] = {
    "dm": ("dm", {}),
    "dkkt_default": ("dm_dkkt", {}),
    "init_real": ("dm_dkkt", {"init": "real"}),
    "paper_l1": ("dm_dkkt", {"distance": "l1"}),  # the paper read literally: L1, alpha 0.1/0.01/0.001
    "l2_floor_nnls": ("dm_dkkt", {"distance": "l2", "scale": "floor", "refit_every": 20}),
    "alpha_0.1": ("dm_dkkt", {"alpha": 0.1}),
    "primal_ce": ("dm_dkkt", {"primal": "ce"}),
    "params_all": ("dm_dkkt", {"params": "all"}),
    "params_weights": ("dm_dkkt", {"params": "weights"}),
    "alpha_3": ("dm_dkkt", {"alpha": 3.0}),
    "alpha_0.01": ("dm_dkkt", {"alpha": 0.01}),
    "dkkt_manifold": ("dm_dkkt", {"manifold_weight": 5.0}),
    "dkkt_margin": ("dm_dkkt", {"dkkt.stationarity": "margin"}),
    "dkkt_margin_manifold": ("dm_dkkt", {"dkkt.stationarity": "margin", "manifold_weight": 5.0}),
    "dkkt_margin_softrelu_weights": ("dm_dkkt", {"dkkt.stationarity": "margin", "dkkt.soft_relu": 20.0,
                                                 "dkkt.params": "weights"}),
    "multiplier_projected": ("dm_dkkt", {"multiplier": "projected"}),
    "nnls_refit": ("dm_dkkt", {"refit_every": 20}),
    "dsv_noise": ("dsv", {}),
    "dsv_real": ("dsv", {"init": "real"}),
    # Deep Support Vectors as the papers make them (issue 9): DSV alone, one ingredient at a time
    "dsv_adam": ("dsv", {"image_optimizer": "adam", "lr_img": 0.05}),
    "dsv_adam_manifold": ("dsv", {"image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0}),
    "dsv_adam_manifold_margin": ("dsv", {"image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                                         "dkkt.stationarity": "margin"}),
    "dsv_adam_manifold_softrelu": ("dsv", {"image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                                           "dkkt.soft_relu": 20.0}),
    "dsv_adam_manifold_l1_all": ("dsv", {"image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                                         "dkkt.distance": "l1", "dkkt.params": "all"}),
    "dsv_haim": ("dsv", {"image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                         "dkkt.stationarity": "margin", "dkkt.soft_relu": 20.0, "dkkt.multiplier": "projected",
                         "dkkt.lambda_min": 0.05, "multiplier_optimizer": "sgd", "lr_multiplier": 0.01}),
    "dsv_lowres": ("dsv", {"image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                           "resolutions": (7, 14), "upscale_every": 300}),
    "dsv_adam_manifold_cropflip": ("dsv", {"image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                                           "manifold_strategy": "crop_flip"}),
    "dsv_adam_manifold1_cropflip": ("dsv", {"image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 1.0,
                                            "manifold_strategy": "crop_flip"}),
    "dsv_adam_margin": ("dsv", {"image_optimizer": "adam", "lr_img": 0.05, "dkkt.stationarity": "margin"}),
    "dsv_adam_lr0.01": ("dsv", {"image_optimizer": "adam", "lr_img": 0.01}),
    "dsv_lowres_tv": ("dsv", {"image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                              "resolutions": (7, 14), "upscale_every": 300, "dkkt.tv_weight": 0.3}),
}
VAL_SEED, VAL_PER_CLASS = 999, 200


def validation_indices(train, per_class: int = VAL_PER_CLASS) -> torch.Tensor:
    """Held-out training images: per class, a seed-999 draw avoiding every practical subset."""
    from dkkt_plugin.data import PracticalSubset

    taken: set[int] = set()
    for seed in range(5):
        taken |= set(PracticalSubset(train, 50, seed=seed).indices.tolist())
    gen = torch.Generator().manual_seed(VAL_SEED)
    chosen = []
    for c in range(train.num_classes):
        idx = (train.targets == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)].tolist()
        chosen += [i for i in idx if i not in taken][:per_class]
    return torch.tensor(chosen)


def _key(variant: str, pipc, seed: int, ipc: int = 1) -> str:
    return f"{variant}/{pipc}/{seed}" if ipc == 1 else f"{variant}/ipc{ipc}/{pipc}/{seed}"


def run(args: argparse.Namespace) -> int:
    from dkkt_plugin.data import PracticalSubset, load_fashion_mnist
    from dkkt_plugin.engine import build_config, run_distillation
    from dkkt_plugin.evaluation import evaluate_synthetic, get_protocol
    from dkkt_plugin.methods.base import DistillData
    from dkkt_plugin.pretrain import load_edge_model

    train = load_fashion_mnist(args.data_root)
    if args.split == "val":
        idx = validation_indices(train)
        ex, ey = train.images[idx], train.targets[idx]
    else:
        test = load_fashion_mnist(args.data_root, train=False)
        ex, ey = test.images, test.targets
    edge, meta = load_edge_model(args.edge_model)
    transfer = load_edge_model(args.transfer_model)[0] if args.transfer_model else None
    out = Path(args.out)
    results = out / f"ablation-{args.split}.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["key"] for line in results.open()} if results.exists() else set()
    protocol = get_protocol("dm", args.eval_epochs)
    command = "python -m benchmarks.ablation " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    for pipc in args.pipc:
        for seed in args.seeds:
            x, y = PracticalSubset(train, pipc, seed=seed).tensors()
            data = DistillData(x, y, 10, train.mean, train.std, edge)
            for variant in args.variants:
                key = _key(variant, pipc, seed, args.ipc)
                if key in done:
                    continue
                method, overrides = VARIANTS[variant]
                cfg = build_config(method, overrides, ipc=args.ipc, pipc=pipc, iterations=args.iterations,
                                   seed=seed, edge_model=args.edge_model)
                run_dir = out / "runs" / args.split / key.replace("/", "-")
                start = time.time()
                res = run_distillation(method, cfg, run_dir, data=data, command=command,
                                       resume=(run_dir / "checkpoint.pt").exists(), transfer_model=transfer)
                ev = evaluate_synthetic(res.images, res.labels, ex, ey, protocol=protocol,
                                        num_eval=args.num_eval, seed=seed, desc=key)
                line = {"key": key, "variant": variant, "method": method, "overrides": overrides,
                        "pipc": pipc, "seed": seed, "split": args.split, "accuracy": ev.mean,
                        "accuracies": ev.accuracies, "protocol": ev.protocol,
                        "iterations": args.iterations, "seconds": round(time.time() - start, 1),
                        "final": res.record["history"][-1], "fidelity": res.record["fidelity"],
                        "ipc": args.ipc, "transfer_model": args.transfer_model, "edge_model": args.edge_model,
                        "edge_test_accuracy": meta["test_accuracy"], "command": command,
                        "machine": f"{platform.machine()} threads={torch.get_num_threads()} (CPU)",
                        "date": datetime.datetime.now().isoformat(timespec="seconds"),
                        "note": "CPU-sized ablation, not the paper's protocol"}
                with results.open("a") as fh:
                    fh.write(json.dumps(line) + "\n")
                print(f"{key}: {100 * ev.mean:.2f} % ({args.split})", flush=True)
    return 0


def report(args: argparse.Namespace) -> int:
    from scipy.stats import ttest_ind

    lines = [json.loads(s) for s in Path(args.results).read_text().splitlines() if s.strip()]
    by = {}
    for r in lines:
        by.setdefault((r["pipc"], r["variant"]), []).append(100 * r["accuracy"])
    pipcs = sorted({p for p, _ in by}, key=str)
    variants = [v for v in VARIANTS if any((p, v) in by for p in pipcs)]
    split = lines[0]["split"] if lines else "?"
    rows = [f"Split: {split} ({'held-out training images, used to choose settings' if split == 'val' else 'test set'}); "
            f"ipc 1; mean ± std over distillation seeds (np.std, ddof 0) of the per-seed mean accuracy; "
            f"Welch t-test against DM on the per-seed values. CPU-sized.", "",
            "| variant | " + " | ".join(f"pipc {p}: acc (%) | p vs DM | final stat/floor" for p in pipcs) + " |",
            "|---|" + "---|---|---|" * len(pipcs)]
    for v in variants:
        cells = []
        for p in pipcs:
            acc = by.get((p, v))
            if not acc:
                cells += ["", "", ""]
                continue
            base = by.get((p, "dm"), [])
            pv = ttest_ind(acc, base, equal_var=False).pvalue if v != "dm" and len(acc) > 1 and len(base) > 1 else None
            ratio = [r["final"].get("stat_ratio") for r in lines if r["pipc"] == p and r["variant"] == v]
            ratio = [x for x in ratio if x is not None]
            cells += [f"{np.mean(acc):.2f} ± {np.std(acc):.2f} (n={len(acc)})",
                      "" if pv is None else f"{pv:.3g}",
                      f"{np.mean(ratio):.3f}" if ratio else ""]
        rows.append(f"| {v} | " + " | ".join(cells) + " |")
    text = "\n".join(rows) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def curves(args: argparse.Namespace) -> int:
    """Plot the DKKT diagnostics of every finished DKKT run (``runs/<split>/<variant>-<pipc>-<seed>``)."""
    from .figures import plot_diagnostics

    root = Path(args.out_dir) / "runs" / args.split
    histories: dict[str, list] = {}
    for variant in args.variants or VARIANTS:
        for record in sorted(root.glob(f"{variant}-{args.pipc}-*/record.json")):
            history = json.loads(record.read_text())["history"]
            if history and "stat_ratio" in history[0]:  # DKKT runs only (DM has no diagnostics)
                histories.setdefault(variant, []).append(history)
    if not histories:
        print(f"no DKKT run records under {root} for pipc {args.pipc}", file=sys.stderr)
        return 1
    out = Path(args.png or Path(args.out_dir) / f"curves-{args.split}-pipc{args.pipc}.png")
    plot_diagnostics(histories, out, f"DKKT diagnostics, Fashion-MNIST ipc 1 pipc {args.pipc} "
                                     f"({args.split} runs, CPU-sized); band: min-max over seeds")
    print(f"wrote {out} ({', '.join(f'{k}: {len(v)}' for k, v in histories.items())})")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--edge-model", required=True)
    r.add_argument("--data-root", default=None)
    r.add_argument("--split", choices=("val", "test"), default="val")
    r.add_argument("--pipc", type=lambda s: [v if v == "all" else int(v) for v in s.split(",")], default=[10, 50])
    r.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    r.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    r.add_argument("--iterations", type=int, default=200)
    r.add_argument("--ipc", type=int, default=1)
    r.add_argument("--transfer-model", default=None, help="independent classifier for the transfer accuracy")
    r.add_argument("--eval-epochs", type=int, default=300)
    r.add_argument("--num-eval", type=int, default=2)
    r.add_argument("--out", default="benchmarks/results/ablation")
    r.set_defaults(func=run)
    q = sub.add_parser("report")
    q.add_argument("--results", required=True)
    q.add_argument("--out", default=None)
    q.set_defaults(func=report)
    c = sub.add_parser("curves", help="PNG of the DKKT diagnostics over iterations, per variant")
    c.add_argument("--out-dir", default="benchmarks/results/ablation", help="the run command's --out")
    c.add_argument("--split", choices=("val", "test"), default="val")
    c.add_argument("--pipc", default="10")
    c.add_argument("--variants", type=lambda s: s.split(","), default=None, help="default: all")
    c.add_argument("--png", default=None, help="output file (default <out-dir>/curves-<split>-pipc<pipc>.png)")
    c.set_defaults(func=curves)
    args = p.parse_args(argv)
    args.argv = argv
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
