"""DC+DKKT and DSA+DKKT: gradient matching as the host loss of the DKKT term.

The practical paper's ``L_DKKT + β·L_host`` with DC's (or DSA's) gradient matching as ``L_host``.
DC's loop structure is unchanged: each iteration draws a fresh matching network, then runs
``outer_loop`` matching steps with ``inner_loop`` epochs of network training between two of
them. In each matching step the matching loss ``L_GM`` is summed over every class of the synthetic
set (one image update per outer step, as in DC); the DKKT term is evaluated on all synthetic
images at that same step (unaugmented, by the frozen edge model), and the one image update uses

- ``dkkt.balance grad`` (the default): ``∇L_GM + s·∇L_DKKT`` with ``s = balance_fraction ·
  ‖∇L_GM‖ / ‖∇L_DKKT‖`` (:class:`~dkkt_plugin.losses.balance.GradBalance`, no gradient through
  ``s``), at DC's image lr 0.1; ``balance_fraction 0`` is DC (or DSA) exactly;
- ``dkkt.balance fixed``: ``∇(L_DKKT + β·L_GM)`` at image lr ``0.1/β``.

The multipliers follow their own optimiser (Adam, lr 0.01) on ``∇L_DKKT`` after every image
update. The network's inner training sees the updated images only, as in DC. Logged per
iteration (means over its outer steps): ``loss`` (the combination descended), ``gm``, ``dkkt``,
``balance_scale`` and the DKKT term's diagnostics (as DSV's).
"""
from __future__ import annotations

import torch

from ..settings import DSADKKTConfig, GMConfig, GMDKKTConfig  # noqa: F401 (defined torch-free)
from .base import check_finite
from .dkkt import DKKTTerm, balancer_of, dkkt_diagnostics
from .gm import DC

HOST_LR = GMConfig.lr_img  # DC's image lr (0.1): the matching loss's step under either weighting


class DCDKKT(DKKTTerm, DC):
    """DC with the DKKT term of the pretrained edge model (gradient matching + DKKT)."""

    name = "dc_dkkt"
    config_class = GMDKKTConfig
    needs_edge_model = True

    @property
    def image_lr(self) -> float:
        cfg = self.config
        if cfg.lr_img is not None:
            return cfg.lr_img
        return HOST_LR if cfg.dkkt.balance == "grad" else HOST_LR / cfg.beta

    def setup(self) -> None:
        super().setup()  # DC's: the images' SGD, the loops, the matching loss
        cfg = self.config
        self.dkkt = self.loss(cfg.dkkt_loss, self.data.edge_model, self.images.shape[0], cfg.dkkt_config())
        opt = torch.optim.Adam if cfg.multiplier_optimizer == "adam" else torch.optim.SGD
        self.multiplier_optimizer = opt(self.dkkt.parameters(), lr=cfg.lr_multiplier)
        self.balancer = balancer_of(self.dkkt, cfg.dkkt)

    def update_images(self, loss: torch.Tensor, where: str) -> dict[str, float]:
        """One image update from ``L_GM`` of this outer step plus the DKKT term (module notes)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.multiplier_optimizer.zero_grad(set_to_none=True)
        host = loss if self.balancer is not None else self.config.beta * loss
        (g_host,) = torch.autograd.grad(host, [self.images])  # frees the matching graph first
        terms = self.dkkt.terms(self.images, self.labels)
        check_finite(terms.total, f"{where}: the DKKT term")
        params = list(self.dkkt.parameters())
        g_dkkt, *g_params = torch.autograd.grad(terms.total, [self.images, *params], allow_unused=True)
        if self.balancer is not None:
            stats = self.balancer.apply([self.images], [g_host], [g_dkkt], params, g_params)
            scale = stats.scale
        else:  # fixed weights: ∇(L_DKKT + β·L_GM)
            scale = 1.0
            self.images.grad = g_host + g_dkkt
            for p, g in zip(params, g_params):
                if g is not None:
                    p.grad = g
        self.optimizer.step()
        self.multiplier_optimizer.step()
        self.dkkt.project_()
        dkkt = float(terms.total.detach())
        return {"loss": float(host.detach()) + scale * dkkt, "gm": float(loss.detach()), "dkkt": dkkt,
                "balance_scale": scale, **dkkt_diagnostics(terms, self.dkkt.multipliers)}


class DSADKKT(DCDKKT):
    """DSA (gradient matching with Siamese augmentation) with the DKKT term of the edge model."""

    name = "dsa_dkkt"
    config_class = DSADKKTConfig
