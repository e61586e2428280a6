"""A DatasetCondensation-style gradient-matching (DC) loop in plain PyTorch, with the DKKT term added.

This is what a research codebase's own loop looks like: per iteration a freshly initialised
network; per outer step, per class, the layer-wise distance between the network's gradient on
real and on synthetic images, one SGD step on the images, then a few epochs of training the
network on the synthetic set. dkkt-plugin enters at the marked lines only: building
``DKKTLoss`` from the pretrained edge model with the grad balance (its image gradient is scaled
to ``balance_fraction`` times the matching loss's at every step, so no weight needs tuning), and
``dkkt.backward_with(loss, ...)`` in place of ``loss.backward()``. ``balance_fraction=0`` is
the plain loop, bit for bit.

Run (needs Fashion-MNIST; the edge model defaults to the packaged one), then evaluate the result:
    python examples/gm_loop_with_dkkt.py --out /tmp/gm_dkkt_example --balance-fraction 0.1
    dkkt evaluate --synthetic /tmp/gm_dkkt_example --num-eval 2 --eval-epochs 100
"""
from __future__ import annotations

import argparse
from typing import Optional

import torch
import torch.nn.functional as F

from dkkt_plugin.losses import DKKTLoss
from dkkt_plugin.nets import ConvNet
from dkkt_plugin.settings import DEFAULT_BALANCE_FRACTION


def match_loss(gw_syn, gw_real) -> torch.Tensor:
    """DatasetCondensation's layer-wise distance: Σ over weights and output rows of 1 - cos."""
    dis = torch.zeros(())
    for gs, gr in zip(gw_syn, gw_real):
        if gs.ndim == 1:  # biases and norm parameters are skipped
            continue
        gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)  # (out, fan_in)
        dis = dis + (1 - (gs * gr).sum(-1) / (gs.norm(dim=-1) * gr.norm(dim=-1) + 1e-6)).sum()
    return dis


def distill(real: torch.Tensor, real_labels: torch.Tensor, num_classes: int, *, ipc: int = 1,
            iterations: int = 20, outer_loop: int = 1, inner_loop: int = 1, lr_img: float = 0.1,
            lr_net: float = 0.01, batch_real: int = 256, edge_model: Optional[torch.nn.Module] = None,
            balance_fraction: float = DEFAULT_BALANCE_FRACTION, seed: int = 0) -> torch.Tensor:
    """DC with an optional DKKT term; returns the synthetic images (num_classes * ipc, C, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    c, h, _ = real.shape[1:]
    indices_class = [(real_labels == k).nonzero().flatten() for k in range(num_classes)]

    def get_images(k: int, n: int) -> torch.Tensor:
        idx = indices_class[k][torch.randperm(len(indices_class[k]), generator=gen)[:n]]
        return real[idx]

    # real-image initialisation, as DC does
    image_syn = torch.cat([get_images(k, ipc) for k in range(num_classes)]).detach().clone()
    image_syn.requires_grad_(True)
    label_syn = torch.arange(num_classes).repeat_interleave(ipc)
    optimizer_img = torch.optim.SGD([image_syn], lr=lr_img, momentum=0.5)

    dkkt = None
    if edge_model is not None:  # model knowledge: one λ per image, weighed by the grad balance
        dkkt = DKKTLoss(edge_model, num_images=len(image_syn), balance="grad", balance_fraction=balance_fraction)
        optimizer_lam = torch.optim.Adam(dkkt.parameters(), lr=0.01)

    for it in range(iterations):
        net = ConvNet(c, num_classes, h, generator=gen)  # fresh random network
        net_params = list(net.parameters())
        optimizer_net = torch.optim.SGD(net_params, lr=lr_net)
        for ol in range(outer_loop):
            loss = torch.zeros(())
            for k in range(num_classes):
                img_real, img_syn = get_images(k, batch_real), image_syn[k * ipc:(k + 1) * ipc]
                lab_real = torch.full((len(img_real),), k)
                lab_syn = torch.full((ipc,), k)
                gw_real = torch.autograd.grad(F.cross_entropy(net(img_real), lab_real), net_params)
                gw_real = [g.detach() for g in gw_real]
                gw_syn = torch.autograd.grad(F.cross_entropy(net(img_syn), lab_syn), net_params, create_graph=True)
                loss = loss + match_loss(gw_syn, gw_real)

            optimizer_img.zero_grad()
            if dkkt is None:
                loss.backward()
            else:
                optimizer_lam.zero_grad()
                dkkt.backward_with(loss, image_syn, label_syn)  # <- replaces loss.backward()
            optimizer_img.step()
            if dkkt is not None:
                optimizer_lam.step()

            if ol == outer_loop - 1:
                break
            for _ in range(inner_loop):  # train the network on the current synthetic set
                optimizer_net.zero_grad()
                F.cross_entropy(net(image_syn.detach()), label_syn).backward()
                optimizer_net.step()
    return image_syn.detach()


def main(argv=None) -> int:
    from pathlib import Path

    from dkkt_plugin import PracticalSubset, load_edge_model, load_fashion_mnist, packaged_edge_model, save_synthetic

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for synthetic.pt (then: dkkt evaluate --synthetic OUT)")
    p.add_argument("--edge-model", default=None, help="from `dkkt pretrain` (default: the packaged one)")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: the loader's)")
    p.add_argument("--balance-fraction", type=float, default=DEFAULT_BALANCE_FRACTION,
                   help="the DKKT term's image gradient as a fraction of the matching loss's (0: plain DC)")
    p.add_argument("--pipc", type=int, default=10)
    p.add_argument("--iterations", type=int, default=20)
    args = p.parse_args(argv)
    train = load_fashion_mnist(args.data_root)
    real, labels = PracticalSubset(train, args.pipc, seed=0).tensors()
    edge, _ = load_edge_model(args.edge_model or packaged_edge_model())
    images = distill(real, labels, 10, iterations=args.iterations, edge_model=edge,
                     balance_fraction=args.balance_fraction)
    # a synthetic set `dkkt evaluate` reads: its dataset, settings and normalisation go with it
    config = {"dataset": "fashion_mnist", "data_root": args.data_root, "ipc": 1, "pipc": args.pipc,
              "iterations": args.iterations, "balance_fraction": args.balance_fraction}
    out = Path(args.out) / "synthetic.pt"
    save_synthetic(out, images, torch.arange(10), method="gm_loop_with_dkkt", config=config,
                   mean=train.mean, std=train.std)
    print(f"wrote {out}: {tuple(images.shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
