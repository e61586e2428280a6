"""The edge model: a ConvNet trained on the full training set, saved with its provenance.

A checkpoint records the architecture, the dataset and its normalisation, the training settings,
the test accuracy, the seed and the command that produced it, so ``dm_star``, ``dsv`` and
``dm_dkkt`` can rebuild the model and check it matches the data they distil.

Example:
    >>> import tempfile, os
    >>> from dkkt_plugin.nets import ConvNet
    >>> path = os.path.join(tempfile.mkdtemp(), "edge.pt")
    >>> save_edge_model(path, ConvNet(1, 10, 28, width=4), {"dataset": "fashion_mnist"})
    >>> model, meta = load_edge_model(path)
    >>> meta["arch"]["width"], meta["dataset"]
    (4, 'fashion_mnist')
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

import torch

from . import registry
from .errors import CheckpointError
from .fileio import check_writable, load_torch, save_torch
from .provenance import provenance
from .settings import PretrainConfig  # noqa: F401 (defined torch-free, used here)
from .nets import ConvNet
from .training import TrainConfig, accuracy, train_classifier

FORMAT = "dkkt-edge-model/1"


def save_edge_model(path: str | os.PathLike, model: ConvNet, meta: dict[str, Any]) -> None:
    """Write ``model`` and ``meta`` atomically (temporary file, then rename)."""
    payload = {"format": FORMAT, "arch": dict(model.config),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **meta}
    save_torch(payload, path)


def load_edge_model(path: str | os.PathLike, device: Any = None) -> tuple[ConvNet, dict[str, Any]]:
    """Rebuild the edge model from a checkpoint written by :func:`save_edge_model`, or from the
    packaged one a name stands for (``fmnist``: :data:`dkkt_plugin.demo.EDGE_MODELS`).

    Raises:
        CheckpointError: the file is missing, unreadable, or not an edge-model checkpoint.
    """
    from .demo import edge_model_path

    path = edge_model_path(path)
    payload = load_torch(path, "edge model", FORMAT,
                         "create one with `dkkt pretrain --dataset DATASET --out PATH`")
    try:
        model = ConvNet(**payload["arch"], device=device)
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:
        raise CheckpointError(f"edge model {path} does not match its recorded architecture ({exc})") from exc
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "format")}
    return model.eval(), meta


@torch.no_grad()
def _features(model: ConvNet, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model.embed(images[s:s + batch]) for s in range(0, len(images), batch)])


def refit_classifier(model: ConvNet, images: torch.Tensor, labels: torch.Tensor, weight_decay: float,
                     max_iter: int = 500) -> float:
    """Minimise ``mean CE + (wd/2)·‖W, b‖²`` over the classifier layer exactly (it is convex).

    The features are computed once with the rest of the network frozen; full-batch L-BFGS then
    finds the regularised optimum, where the classifier satisfies the KKT stationarity
    ``θ_c = -(1/(wd N)) Σ_i ∇θ_c ℓ_i`` up to the solver tolerance. Returns the final loss.
    """
    feats = _features(model, images)  # (N, D)
    lin = model.classifier
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(feats), labels)
        loss = loss + 0.5 * weight_decay * (lin.weight.pow(2).sum() + lin.bias.pow(2).sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        return float(opt.step(closure).detach())


def pretrain(cfg: PretrainConfig, out: str | os.PathLike, *, device: Any = "cpu",
             command: str = "") -> dict[str, Any]:
    """Train a ConvNet on the full training set of ``cfg.dataset`` and save it to ``out``.

    Returns the metadata written beside the weights (including ``test_accuracy``).
    """
    load = registry.load("datasets", cfg.dataset)
    train = load(cfg.data_root, train=True)
    test = load(cfg.data_root, train=False)
    check_writable(out)  # after the data (a bad --dataset leaves no folder), before the training
    gen = torch.Generator().manual_seed(cfg.seed)
    c, h, _ = train.image_shape
    model = ConvNet(c, train.num_classes, h, width=cfg.width, depth=cfg.depth, generator=gen, device=device)
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                       weight_decay=cfg.weight_decay, lr_schedule="cosine")
    start = time.time()
    x, y = train.images.to(device), train.targets.to(device)
    train_classifier(model, x, y, tcfg, generator=gen, desc=f"pretrain {cfg.dataset}")
    if cfg.refit_classifier:
        refit_classifier(model, x, y, cfg.weight_decay)
    seconds = time.time() - start
    meta = {
        "dataset": cfg.dataset, "mean": list(train.mean), "std": list(train.std),
        "num_train": len(train), "config": asdict(cfg), "train_config": asdict(tcfg),
        "test_accuracy": accuracy(model, test.images.to(device), test.targets.to(device)),
        "train_accuracy": accuracy(model, x, y), "train_seconds": round(seconds, 1),
        "seed": cfg.seed, **provenance(command=command, device=device),
    }
    save_edge_model(out, model, meta)
    return meta
