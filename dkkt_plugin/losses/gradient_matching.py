"""Gradient matching (DC / DSA): make the synthetic set's training gradient match the real one's.

Per class, ``g_real = ∇θ CE(net(A(real_c)))`` (a constant) and ``g_syn = ∇θ CE(net(A(syn_c)))``
(kept in the graph), compared layer by layer. The ``ours`` distance of DatasetCondensation
reshapes each weight to (out_channels, -1) and sums ``1 - cos`` over the rows; 1-D parameters
(biases, norm scales) contribute 0. ``mse`` and ``cos`` compare the flattened gradients.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

METRICS = ("ours", "mse", "cos")
_EPS = 1e-6  # as in the reference, guards a zero-norm row


def gradient_distance(g_syn: Sequence[torch.Tensor], g_real: Sequence[torch.Tensor],
                      metric: str = "ours") -> torch.Tensor:
    """Distance between two lists of per-parameter gradients (same shapes, same order)."""
    if metric == "ours":
        total = g_syn[0].new_zeros(())
        for gs, gr in zip(g_syn, g_real):
            if gs.ndim == 1:
                continue  # biases and norm parameters contribute 0
            gs, gr = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)  # (out, fan_in)
            cos = (gs * gr).sum(-1) / (gs.norm(dim=-1) * gr.norm(dim=-1) + _EPS)
            total = total + (1 - cos).sum()
        return total
    vs = torch.cat([g.reshape(-1) for g in g_syn])
    vr = torch.cat([g.reshape(-1) for g in g_real])
    if metric == "mse":
        return (vs - vr).pow(2).sum()
    if metric == "cos":
        return 1 - (vs * vr).sum() / (vs.norm() * vr.norm() + _EPS)
    raise ConfigError(f"unknown gradient-matching metric {metric!r}; choose one of {METRICS}")


class GradientMatchingLoss(nn.Module):
    """Classwise gradient matching of DC (``augment=None``) and DSA (``augment=DSA(...)``).

    Args:
        metric: ``ours`` (layer-wise Σ(1 − cos) over output rows), ``mse`` or ``cos``.
        augment: Siamese augmentation; class c's real and synthetic batches share one draw.

    Shape:
        - real ``(R, C, H, W)``, real_labels ``(R,)``, syn ``(S, C, H, W)``, syn_labels ``(S,)``.
        - Output: scalar, summed over the classes present in ``syn_labels``.

    Example:
        >>> from dkkt_plugin.nets import ConvNet
        >>> net = ConvNet(channels=1, num_classes=2, image_size=28, width=8)
        >>> gm = GradientMatchingLoss()
        >>> syn = torch.randn(2, 1, 28, 28, requires_grad=True)
        >>> loss = gm(net, torch.randn(6, 1, 28, 28), torch.tensor([0, 1] * 3), syn, torch.tensor([0, 1]))
        >>> loss.backward(); syn.grad.shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(self, metric: str = "ours", *, augment: Optional[nn.Module] = None) -> None:
        super().__init__()
        if metric not in METRICS:
            raise ConfigError(f"unknown gradient-matching metric {metric!r}; choose one of {METRICS}")
        self.metric = metric
        self.augment = augment

    def forward(self, net: nn.Module, real: torch.Tensor, real_labels: torch.Tensor,
                syn: torch.Tensor, syn_labels: torch.Tensor) -> torch.Tensor:
        params = [p for p in net.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("gradient matching needs a network with trainable parameters")
        classes = syn_labels.unique()
        draw = self.augment.sample(classes.numel(), device=syn.device) if self.augment is not None else None
        loss = syn.new_zeros(())
        for k, c in enumerate(classes.tolist()):
            rc, sc = real[real_labels == c], syn[syn_labels == c]
            if rc.shape[0] == 0:
                raise ConfigError(f"no real images of class {c}: gradient matching needs every class")
            if draw is not None:
                rc = self.augment(rc, draw, torch.full((rc.shape[0],), k, device=rc.device))
                sc = self.augment(sc, draw, torch.full((sc.shape[0],), k, device=sc.device))
            yr = torch.full((rc.shape[0],), c, device=rc.device)
            ys = torch.full((sc.shape[0],), c, device=sc.device)
            g_real = torch.autograd.grad(F.cross_entropy(net(rc), yr), params)
            g_real = [g.detach() for g in g_real]
            g_syn = torch.autograd.grad(F.cross_entropy(net(sc), ys), params, create_graph=True)
            loss = loss + gradient_distance(g_syn, g_real, self.metric)
        return loss
