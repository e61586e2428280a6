"""Backward FLOPs of the balancing rule against one backward of the sum of the two losses.

DKKT term + DM, and DKKT term + gradient matching, at ipc 10 on 28×28 images (width-128
ConvNets, the packaged edge model, fp32): `torch.utils.flop_counter` over the backward alone of
`GradBalance(0.1).backward(L_host, L_dkkt, images, multipliers)` and of `(L_host + L_dkkt).backward()`.

    python scripts/term_cost.py
"""
from __future__ import annotations

import sys

import torch
from torch.utils.flop_counter import FlopCounterMode


def main() -> int:
    from dkkt_plugin import runtime
    from dkkt_plugin.losses import DKKTLoss, DMLoss, GradBalance, GradientMatchingLoss
    from dkkt_plugin.nets import ConvNet
    from dkkt_plugin.pretrain import load_edge_model

    edge, _ = load_edge_model("fmnist")
    ipc, classes = 10, 10
    real = torch.randn(classes * 10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    real_labels = torch.arange(classes).repeat(10)

    def host(kind):
        net = ConvNet(1, classes, 28, generator=torch.Generator().manual_seed(1))
        if kind == "gradient matching":
            gm = GradientMatchingLoss()
            return lambda x, y: gm(net, real, real_labels, x, y)
        dm = DMLoss(net, reinit=False)
        return lambda x, y: dm(real, real_labels, x, y)

    def backward_flops(kind, mode):
        x = torch.randn(classes * ipc, 1, 28, 28, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        y = torch.arange(classes).repeat_interleave(ipc)
        dkkt = DKKTLoss(edge, classes * ipc)
        loss_h, loss_d = host(kind)(x, y), dkkt(x, y)  # the forward passes are not counted
        with FlopCounterMode(display=False) as counter:
            if mode == "sum":
                (loss_h + loss_d).backward()
            else:
                GradBalance(0.1).backward(loss_h, loss_d, x, dkkt.parameters())
        return counter.get_total_flops()

    torch.set_num_threads(1)
    print("| host | backward GFLOP, balancing rule | backward GFLOP, (L_host + L_DKKT).backward() |")
    print("|---|---|---|")
    with runtime.use(precision="fp32"):
        for kind in ("DM", "gradient matching"):
            rule, total = backward_flops(kind, "balance"), backward_flops(kind, "sum")
            print(f"| {kind} | {rule / 1e9:.2f} | {total / 1e9:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
