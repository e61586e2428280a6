"""A DatasetCondensation-style DM loop in plain PyTorch, with the DKKT term added in one line.

This is what a research codebase's own loop looks like: per iteration a freshly initialised
embedding network, per class the squared distance between mean real and mean synthetic
embeddings, SGD on the images. dkkt-plugin enters at two places only: building ``DKKTLoss`` from
the pretrained edge model, and the marked line that adds its term to the loss with a fixed
weight; or, with ``balance_fraction``, the grad balance (the term's image gradient scaled to
that fraction of DM's at every step) through ``dkkt.backward_with(loss, ...)`` in place of
``loss.backward()``. Weight 0 and fraction 0 are the plain loop, bit for bit.

Run (needs Fashion-MNIST; the edge model defaults to the packaged one), then evaluate the result:
    python examples/dm_loop_with_dkkt.py --out /tmp/dm_dkkt_example --dkkt-weight 1.0
    python examples/dm_loop_with_dkkt.py --out /tmp/dm_dkkt_example --balance-fraction 0.1
    dkkt evaluate --synthetic /tmp/dm_dkkt_example --num-eval 2 --eval-epochs 100
"""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from dkkt_plugin.losses import DKKTLoss
from dkkt_plugin.nets import ConvNet


def distill(real: torch.Tensor, real_labels: torch.Tensor, num_classes: int, *, ipc: int = 1,
            iterations: int = 100, lr_img: float = 1.0, batch_real: int = 256,
            edge_model: Optional[torch.nn.Module] = None, dkkt_weight: float = 1.0,
            balance_fraction: Optional[float] = None, seed: int = 0) -> torch.Tensor:
    """DM with an optional DKKT term (weight ``dkkt_weight``, or with ``balance_fraction`` the grad
    balance); returns the synthetic images (num_classes * ipc, C, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    c, h, _ = real.shape[1:]
    indices_class = [(real_labels == k).nonzero().flatten() for k in range(num_classes)]

    def get_images(k: int, n: int) -> torch.Tensor:
        idx = indices_class[k][torch.randperm(len(indices_class[k]), generator=gen)[:n]]
        return real[idx]

    # real-image initialisation, as DM does
    image_syn = torch.cat([get_images(k, ipc) for k in range(num_classes)]).detach().clone()
    image_syn.requires_grad_(True)
    label_syn = torch.arange(num_classes).repeat_interleave(ipc)
    optimizer_img = torch.optim.SGD([image_syn], lr=lr_img, momentum=0.5)

    dkkt = None
    if edge_model is not None:
        balance = {} if balance_fraction is None else {"balance": "grad", "balance_fraction": balance_fraction}
        dkkt = DKKTLoss(edge_model, num_images=len(image_syn), **balance)  # model knowledge, one λ per image
        optimizer_lam = torch.optim.Adam(dkkt.parameters(), lr=0.01)

    for it in range(iterations):
        net = ConvNet(c, num_classes, h, generator=gen).requires_grad_(False)  # fresh random net
        loss = torch.zeros(())
        for k in range(num_classes):
            img_real = get_images(k, batch_real)
            img_syn = image_syn[k * ipc:(k + 1) * ipc]
            output_real = net.embed(img_real).detach()
            output_syn = net.embed(img_syn)
            loss = loss + ((output_real.mean(0) - output_syn.mean(0)) ** 2).sum()

        if dkkt is not None and balance_fraction is None:
            loss = loss + dkkt_weight * dkkt(image_syn, label_syn)  # <- the one added line

        optimizer_img.zero_grad()
        if dkkt is not None:
            optimizer_lam.zero_grad()
        if dkkt is not None and balance_fraction is not None:
            dkkt.backward_with(loss, image_syn, label_syn)  # <- or the grad balance, replacing loss.backward()
        else:
            loss.backward()
        optimizer_img.step()
        if dkkt is not None:
            optimizer_lam.step()
    return image_syn.detach()


def main(argv=None) -> int:
    from pathlib import Path

    from dkkt_plugin import PracticalSubset, load_edge_model, load_fashion_mnist, packaged_edge_model, save_synthetic

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for synthetic.pt (then: dkkt evaluate --synthetic OUT)")
    p.add_argument("--edge-model", default=None, help="from `dkkt pretrain` (default: the packaged one)")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the loader's)")
    p.add_argument("--dkkt-weight", type=float, default=1.0)
    p.add_argument("--balance-fraction", type=float, default=None,
                   help="weigh the DKKT term by the grad balance: its image gradient as this fraction of DM's "
                        "(instead of --dkkt-weight)")
    p.add_argument("--pipc", type=int, default=10)
    p.add_argument("--iterations", type=int, default=100)
    args = p.parse_args(argv)
    train = load_fashion_mnist(args.data_root)
    real, labels = PracticalSubset(train, args.pipc, seed=0).tensors()
    edge, _ = load_edge_model(args.edge_model or packaged_edge_model())
    images = distill(real, labels, 10, iterations=args.iterations, edge_model=edge,
                     dkkt_weight=args.dkkt_weight, balance_fraction=args.balance_fraction)
    # a synthetic set `dkkt evaluate` reads: its dataset, settings and normalisation go with it
    config = {"dataset": "fashion_mnist", "data_root": args.data_root, "ipc": 1, "pipc": args.pipc,
              "iterations": args.iterations, "dkkt_weight": args.dkkt_weight,
              "balance_fraction": args.balance_fraction}
    out = Path(args.out) / "synthetic.pt"
    save_synthetic(out, images, torch.arange(10), method="dm_loop_with_dkkt", config=config,
                   mean=train.mean, std=train.std)
    print(f"wrote {out}: {tuple(images.shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
