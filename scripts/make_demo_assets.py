"""Regenerate the demo's package data in dkkt_plugin/assets/ from the real Fashion-MNIST files.

    python scripts/make_demo_assets.py --edge-model edge.pt [--transfer-model transfer.pt]

``edge.pt`` must come from ``dkkt pretrain --dataset fashion_mnist ...`` (its command line and
test accuracy travel inside the checkpoint). Writes:
    fmnist_edge.pt       that checkpoint, copied
    fmnist_transfer.pt   the --transfer-model checkpoint, copied (``dkkt pretrain --dataset
                         fashion_mnist --width 4 --epochs 1 --seed 1``: the smoke preset's transfer model)
    fmnist_practical.pt  the practical subset: 10 training images per class (PracticalSubset seed 0), uint8
    fmnist_test.pt       a class-balanced test subset: 200 test images per class (seed 0), uint8
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from dkkt_plugin.data import PracticalSubset, load_fashion_mnist
from dkkt_plugin.pretrain import load_edge_model

ASSETS = Path(__file__).resolve().parents[1] / "dkkt_plugin" / "assets"


def to_uint8(subset: PracticalSubset, ds) -> dict:
    images, labels = subset.tensors()
    raw = ds.denormalize(images).mul(255).round().clamp(0, 255).to(torch.uint8)  # exact: stored as /255
    return {"images": raw, "labels": labels.to(torch.uint8), "indices": subset.indices,
            "pipc": subset.pipc, "seed": subset.seed, "access_percent": subset.access_percent,
            "mean": ds.mean[0], "std": ds.std[0], "source": "Debian dataset-fashion-mnist"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edge-model", required=True, help="checkpoint written by `dkkt pretrain`")
    p.add_argument("--transfer-model", default=None, help="an independent classifier from `dkkt pretrain`")
    p.add_argument("--root", default=None, help="Fashion-MNIST folder (default: Debian's)")
    p.add_argument("--pipc", type=int, default=10)
    p.add_argument("--test-per-class", type=int, default=200)
    args = p.parse_args(argv)
    _, meta = load_edge_model(args.edge_model)
    if meta.get("dataset") != "fashion_mnist":
        raise SystemExit(f"{args.edge_model} was trained on {meta.get('dataset')!r}, not fashion_mnist")
    ASSETS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.edge_model, ASSETS / "fmnist_edge.pt")
    if args.transfer_model:
        if load_edge_model(args.transfer_model)[1].get("dataset") != "fashion_mnist":
            raise SystemExit(f"{args.transfer_model} was not trained on fashion_mnist")
        shutil.copyfile(args.transfer_model, ASSETS / "fmnist_transfer.pt")
    train, test = load_fashion_mnist(args.root, train=True), load_fashion_mnist(args.root, train=False)
    torch.save(to_uint8(PracticalSubset(train, args.pipc, seed=0), train), ASSETS / "fmnist_practical.pt")
    torch.save(to_uint8(PracticalSubset(test, args.test_per_class, seed=0), test), ASSETS / "fmnist_test.pt")
    for f in sorted(ASSETS.glob("*.pt")):
        print(f"{f}  {f.stat().st_size / 1e6:.2f} MB")
    print(f"edge model: test accuracy {100 * meta['test_accuracy']:.2f} %, made by: {meta['command']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
