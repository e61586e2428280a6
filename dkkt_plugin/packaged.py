"""The files shipped in ``dkkt_plugin/assets``: two pretrained models and two image sets.

- ``fmnist_edge.pt``: a ConvNet edge model trained by ``dkkt pretrain`` on the full
  Fashion-MNIST training set; its name is ``fmnist`` (:data:`EDGE_MODELS`), so ``dkkt distill
  --edge-model fmnist`` and ``load_edge_model("fmnist")`` use it;
- ``fmnist_transfer.pt``: an independent Fashion-MNIST ConvNet of width 4, named
  ``fmnist-transfer``, the transfer model of the benchmarks' fidelity measures;
- ``fmnist_practical.pt``: the practical subset of ``dkkt demo`` (10 training images per class);
- ``fmnist_test.pt``: a class-balanced test subset (200 test images per class).

``scripts/make_demo_assets.py`` regenerates them. This module imports torch only to read an
image set (:func:`load_images`).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .errors import DatasetError

ASSETS = "assets"  # the package data folder inside dkkt_plugin
EDGE = "fmnist_edge.pt"
PRACTICAL = "fmnist_practical.pt"
TEST = "fmnist_test.pt"
TRANSFER = "fmnist_transfer.pt"

# name -> (packaged asset, what it is): the names --edge-model and load_edge_model accept
EDGE_MODELS = {"fmnist": (EDGE, "the packaged Fashion-MNIST ConvNet, 90.76 % test accuracy"),
               "fmnist-transfer": (TRANSFER, "an independent Fashion-MNIST ConvNet of width 4 (seed 1), "
                                             "82.02 % test accuracy, for transfer accuracy")}


def asset_path(name: str) -> Path:
    """The path of the packaged file ``name`` (one of :data:`EDGE`, :data:`PRACTICAL`,
    :data:`TEST`, :data:`TRANSFER`); a DatasetError when the installation lacks it.

    Example:
        >>> asset_path(EDGE).name
        'fmnist_edge.pt'
    """
    path = Path(str(resources.files("dkkt_plugin") / ASSETS / name))
    if not path.is_file():
        raise DatasetError(f"packaged asset {path} is missing: reinstall dkkt-plugin, or regenerate it "
                           "with `python scripts/make_demo_assets.py` from a checkout")
    return path


def packaged_edge_model() -> Path:
    """Path of the packaged Fashion-MNIST edge model (ConvNet, 90.76 % test accuracy, made by
    ``dkkt pretrain --dataset fashion_mnist --epochs 3 --weight-decay 5e-3 --seed 0``); its name
    is ``fmnist``.

    Example:
        >>> from dkkt_plugin import load_edge_model, packaged_edge_model
        >>> model, meta = load_edge_model(packaged_edge_model())
        >>> meta["dataset"], round(meta["test_accuracy"], 4)
        ('fashion_mnist', 0.9076)
    """
    return asset_path(EDGE)


def packaged_transfer_model() -> Path:
    """Path of the packaged independent Fashion-MNIST classifier (ConvNet of width 4, 82.02 % test
    accuracy, made by ``dkkt pretrain --dataset fashion_mnist --width 4 --epochs 1 --seed 1``), the
    transfer model of the benchmarks' fidelity measures; its name is ``fmnist-transfer``."""
    return asset_path(TRANSFER)


def edge_model_path(value: Any) -> Any:
    """The checkpoint an edge-model setting names: a packaged model's path for one of the names
    of :data:`EDGE_MODELS` (``fmnist``), anything else unchanged (a path).

    Example:
        >>> edge_model_path("fmnist").name, edge_model_path("runs/edge.pt")
        ('fmnist_edge.pt', 'runs/edge.pt')
    """
    if isinstance(value, str) and value in EDGE_MODELS:
        return asset_path(EDGE_MODELS[value][0])
    return value


def load_images(name: str) -> tuple:
    """A packaged uint8 image set (:data:`PRACTICAL` or :data:`TEST`), normalised like the training
    data: images (N, 1, 28, 28), labels (N,) and the file's payload (its ``mean``, ``std``, ...)."""
    import torch

    payload = torch.load(asset_path(name), map_location="cpu", weights_only=True)
    mean, std = payload["mean"], payload["std"]
    images = (payload["images"].float() / 255.0 - mean) / std  # (N, 1, 28, 28)
    return images, payload["labels"].long(), payload
