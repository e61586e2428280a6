"""Support-vector behaviour of an edge model on its own training points (Fashion-MNIST).

For a model trained with weight decay ``wd`` on N points, stationarity of the regularised loss
says ``θ* = -(1/(wd N)) Σ_i ∇θ ℓ_i``: the uniform multipliers ``λ_i = 1/(wd N)`` over the whole
training set solve the DKKT stationarity condition. This script measures

1. how close the trained model is to that point: the relative residual of the uniform solution,
   ``‖θ* + (1/(wd N)) Σ_i g_i‖ / ‖θ*‖`` (one pass over the training set);
2. multipliers fitted by non-negative least squares to a sample of training points (the DKKT
   loss's ``fit_multipliers``): their relative residual, and how much of their mass sits on
   low-margin points (the support-vector claim of the papers);
3. the same question for the *contributions* ``λ_i ‖g_i‖``: with cross-entropy every point has a
   non-zero gradient ``(p_i - y_i) ⊗ features``, so a point's weight in ``Σ λ_i g_i`` is
   ``λ_i ‖g_i‖`` (an SVM's dual variable times a hinge gradient of fixed size is the analogue).
   For the exact solution (uniform λ) over the whole training set this is the share of
   ``Σ ‖g_i‖`` carried by the lowest-margin points.

    python benchmarks/support_vectors.py --edge-model edge.pt --samples 1000 --out benchmarks/results/support_vectors
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from dkkt_plugin.data import PracticalSubset, load_fashion_mnist
from dkkt_plugin.losses.kkt import fit_multipliers_nnls, margins, per_sample_grads, select_parameters
from dkkt_plugin.pretrain import load_edge_model


def uniform_residual(model, names, x, y, wd: float, batch: int = 500) -> float:
    """‖θ* + (1/(wd N)) Σ g_i‖ / ‖θ*‖ over the selected tensors, from one full-data pass."""
    params = dict(model.named_parameters())
    total = [torch.zeros_like(params[n]) for n in names]
    for s in range(0, len(x), batch):
        loss = F.cross_entropy(model(x[s:s + batch]), y[s:s + batch], reduction="sum")
        for t, g in zip(total, torch.autograd.grad(loss, [params[n] for n in names])):
            t += g
    theta = torch.cat([params[n].detach().flatten() for n in names])
    resid = theta + torch.cat([t.flatten() for t in total]) / (wd * len(x))
    return float(resid.norm() / theta.norm())


def per_sample_norms(grads) -> torch.Tensor:
    """``‖g_i‖`` over all tensors of per-sample gradients (each ``(N, ...)``), shape ``(N,)``."""
    return torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads))


def gradient_norms(model, names, x, y, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point ``‖∇θ ℓ_i‖`` over the selected tensors and the margins, both ``(N,)``, in chunks."""
    norms, margin = [], []
    for s in range(0, len(x), batch):
        xb, yb = x[s:s + batch], y[s:s + batch]
        norms.append(per_sample_norms(per_sample_grads(model, names, xb, yb)))
        with torch.no_grad():
            margin.append(margins(model, xb, yb))
    return torch.cat(norms), torch.cat(margin)


def low_margin_share(weights: torch.Tensor, margin: torch.Tensor, fraction: float) -> float:
    """Share of ``weights.sum()`` on the ``fraction`` of points with the lowest margin.

    Example:
        >>> low_margin_share(torch.tensor([3.0, 1.0, 0.0, 0.0]), torch.tensor([0.1, 0.2, 5.0, 9.0]), 0.5)
        1.0
    """
    order = torch.argsort(margin)
    k = max(1, int(round(fraction * len(margin))))
    return float(weights[order[:k]].sum() / weights.sum().clamp(min=1e-30))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edge-model", required=True)
    p.add_argument("--samples", type=int, default=1000, help="training points per NNLS fit (balanced)")
    p.add_argument("--params", default="weights", help="all, weights or classifier")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--all-points", action="store_true",
                   help="also measure the exact solution's contributions on every training point (one more pass)")
    p.add_argument("--out", default="benchmarks/results/support_vectors")
    args = p.parse_args(argv)
    torch.set_grad_enabled(True)
    model, meta = load_edge_model(args.edge_model)
    wd = meta["train_config"]["weight_decay"]
    train = load_fashion_mnist()
    names = select_parameters(model, args.params)
    report = {"edge_model": args.edge_model, "edge_test_accuracy": meta["test_accuracy"],
              "weight_decay": wd, "params": args.params, "samples": args.samples, "seed": args.seed,
              "command": "python " + " ".join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
              "machine": f"{platform.machine()} threads={torch.get_num_threads()}",
              "date": datetime.date.today().isoformat()}
    if wd > 0:
        report["uniform_relative_residual"] = uniform_residual(model, names, train.images, train.targets, wd)
    if args.all_points:  # contributions of the exact (uniform) solution over the whole training set
        norms, margin = gradient_norms(model, names, train.images, train.targets)
        report.update({
            "uniform_contribution_on_lowest_margin_10pct": low_margin_share(norms, margin, 0.1),
            "uniform_contribution_on_lowest_margin_50pct": low_margin_share(norms, margin, 0.5),
            "points_carrying_90pct_of_uniform_contribution": float(
                (norms.sort(descending=True).values.cumsum(0) < 0.9 * norms.sum()).float().mean()),
        })
    sub = PracticalSubset(train, args.samples // 10, seed=args.seed)
    x, y = sub.tensors()
    grads = per_sample_grads(model, names, x, y, chunk_size=32)
    theta = [dict(model.named_parameters())[n].detach() for n in names]
    lam, rel = fit_multipliers_nnls(theta, grads)
    m = margins(model, x, y)
    order = torch.argsort(m)
    mass = lam[order].cumsum(0) / lam.sum().clamp(min=1e-30)
    contribution = lam * per_sample_norms(grads)  # λ_i ‖g_i‖
    report.update({
        "nnls_relative_residual": rel,
        "nnls_contribution_on_lowest_margin_10pct": low_margin_share(contribution, m, 0.1),
        "nnls_contribution_on_lowest_margin_50pct": low_margin_share(contribution, m, 0.5),
        "nonzero_multipliers": int((lam > 0).sum()),
        "mass_on_lowest_margin_10pct": low_margin_share(lam, m, 0.1),
        "mass_on_lowest_margin_50pct": low_margin_share(lam, m, 0.5),
        "spearman_lambda_vs_margin": float(spearmanr(lam.numpy(), m.numpy()).statistic),
        "median_margin_all": float(m.median()),
        "median_margin_weighted": float(m[order][int((mass >= 0.5).nonzero()[0])]),
    })
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "support_vectors.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
