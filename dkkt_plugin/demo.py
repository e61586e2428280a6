"""``dkkt demo``: DM vs DM+DKKT (and DSV) on Fashion-MNIST, ipc 1, pipc 10, on the CPU.

Runs from the files shipped in ``dkkt_plugin/assets`` (no download, no GPU): a ConvNet edge
model trained by ``dkkt pretrain`` on the full Fashion-MNIST training set, the practical subset
(10 training images per class) and a class-balanced test subset. ``scripts/make_demo_assets.py``
regenerates them. Everything here is CPU-sized: far fewer iterations and evaluation epochs than
the paper's protocol, and a test subset instead of the 10 000 test images.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .engine import append_evaluation, build_config, run_distillation
from .errors import DatasetError
from .evaluation import evaluate_synthetic, get_protocol
from .methods.base import DistillData
from .pretrain import load_edge_model

ASSETS = "assets"
EDGE = "fmnist_edge.pt"
PRACTICAL = "fmnist_practical.pt"
TEST = "fmnist_test.pt"


@dataclass(frozen=True)
class DemoConfig:
    """The demo's CPU-sized settings (the paper: 20 000 iterations, 5000 SAM epochs)."""

    iterations: int = 150  # distillation iterations of dm and dm_dkkt (the paper: 20 000)
    dsv_iterations: int = 1000  # DSV's own default budget (a DSV step is ~5x cheaper than a DM+DKKT step)
    eval_epochs: int = 200  # the dm protocol (SGD + DSA) scaled from 1000 epochs
    num_eval: int = 2  # evaluation runs (fresh ConvNets) per method
    seed: int = 0  # distillation seed; evaluation run r uses seed + r
    methods: tuple[str, ...] = ("dm", "dm_dkkt", "dsv")  # registered methods to compare, comma-separated


def asset_path(name: str) -> Path:
    path = Path(str(resources.files("dkkt_plugin") / ASSETS / name))
    if not path.is_file():
        raise DatasetError(f"demo asset {path} is missing: reinstall dkkt-plugin, or regenerate it "
                           "with `python scripts/make_demo_assets.py` from a checkout")
    return path


def packaged_edge_model() -> Path:
    """Path of the packaged Fashion-MNIST edge model (ConvNet, 90.76 % test accuracy, made by
    ``dkkt pretrain --dataset fashion_mnist --epochs 3 --weight-decay 5e-3 --seed 0``).

    Example:
        >>> from dkkt_plugin import load_edge_model, packaged_edge_model
        >>> model, meta = load_edge_model(packaged_edge_model())
        >>> meta["dataset"], round(meta["test_accuracy"], 4)
        ('fashion_mnist', 0.9076)
    """
    return asset_path(EDGE)


def load_images(name: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A packaged uint8 image set, normalised like the training data: (N, 1, 28, 28), (N,)."""
    payload = torch.load(asset_path(name), map_location="cpu", weights_only=True)
    mean, std = payload["mean"], payload["std"]
    images = (payload["images"].float() / 255.0 - mean) / std
    return images, payload["labels"].long(), payload


def run_demo(out_dir: str | Path, cfg: DemoConfig = DemoConfig(), *, device: Any = "cpu",
             command: str = "", echo=print) -> list[dict]:
    """Distil with each method, evaluate on the packaged test subset, print and return a table."""
    edge, meta = load_edge_model(asset_path(EDGE), device=device)
    real, real_labels, practical = load_images(PRACTICAL)
    test_x, test_y, test_meta = load_images(TEST)
    data = DistillData(real, real_labels, 10, (practical["mean"],), (practical["std"],), edge)
    protocol = get_protocol("dm", cfg.eval_epochs)
    out = Path(out_dir)
    echo(f"dkkt demo (CPU-sized, not the paper's protocol): Fashion-MNIST, ipc 1, pipc 10 "
         f"({len(real)} real images, {practical['access_ratio']:.3f} % of the training set), "
         f"{cfg.iterations} distillation iterations, DSV {cfg.dsv_iterations} (paper: 20000); evaluation: "
         f"{protocol.describe()}, "
         f"{cfg.num_eval} runs, on {len(test_x)} test images")
    echo(f"edge model: test accuracy {100 * meta['test_accuracy']:.2f} % ({meta['command']})")
    rows = []
    for method in cfg.methods:
        iterations = cfg.dsv_iterations if method == "dsv" else cfg.iterations
        run_cfg = build_config(method, dataset="fashion_mnist", ipc=1, pipc=10, iterations=iterations,
                               seed=cfg.seed, edge_model=str(asset_path(EDGE)))
        start = time.time()
        res = run_distillation(method, run_cfg, out / method, device=device, data=data,
                               command=command, resume=(out / method / "checkpoint.pt").exists())
        ev = evaluate_synthetic(res.images, res.labels, test_x, test_y, protocol=protocol,
                                num_eval=cfg.num_eval, seed=cfg.seed, device=device, desc=f"evaluate {method}")
        append_evaluation(res.out_dir, ev.as_dict(), command=command, device=device)
        rows.append({"method": method, "accuracy": 100 * ev.mean, "std": 100 * ev.std,
                     "seconds": time.time() - start, "grid": str(res.out_dir / "synthetic.png")})
        echo(f"  {method:<8} {100 * ev.mean:6.2f} ± {100 * ev.std:4.2f} %  ({rows[-1]['seconds']:.0f} s)")
    echo("")
    echo("| method | accuracy (%) | time (s) | image grid |")
    echo("|---|---|---|---|")
    for r in rows:
        echo(f"| {r['method']} | {r['accuracy']:.2f} ± {r['std']:.2f} | {r['seconds']:.0f} | {r['grid']} |")
    return rows
