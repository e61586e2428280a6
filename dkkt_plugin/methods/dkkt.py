"""DSV (the DKKT loss alone) and DM+DKKT (the practical paper's method).

    L_DSV   = L_primal + α · L_stat              (the DKKT loss, ``dkkt_plugin.losses.DKKTLoss``)
    L_total = L_DSV + β · L_DM                   (DM+DKKT)

The DKKT settings are one nested :class:`~dkkt_plugin.losses.DKKTConfig` (``dkkt.*`` flags).
α defaults to 1.0 with the default cos distance, and to the paper's 0.1 / 0.01 / 0.001 for pipc
10 / 50 / all with its L1 / L2 distances; β (the DM ratio) to 0.01 at ipc 50, 0.001 otherwise,
and the image lr to 1/β (DSV: 100). The images follow SGD with momentum; the multipliers follow
Adam on their own parameterisation. Every step logs the diagnostics of the stationarity term (its
floor, the ratio to it, the edge model's accuracy on the synthetic images and the multipliers'
distribution).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..errors import ConfigError
from ..losses.dkkt import DKKTConfig
from .base import AugmentedConfig, Method, check_finite

DSV_LR = 100.0  # image SGD lr of the DKKT loss alone (DSV), when lr_img is not given


def paper_alpha(pipc) -> float:
    """The paper's stationarity rate: 0.1 / 0.01 / 0.001 for pipc 10 / 50 / all (nearest below)."""
    if pipc == "all" or (isinstance(pipc, int) and pipc > 50):
        return 0.001
    return 0.1 if pipc < 50 else 0.01


def paper_beta(ipc: int) -> float:
    """The paper's DM ratio: 0.01 at ipc 50, 0.001 otherwise."""
    return 0.01 if ipc >= 50 else 0.001


@dataclass(frozen=True)
class DSVMethodConfig(AugmentedConfig):
    """DSV settings: the DKKT loss alone, from noise (default) or real images."""

    # learning rate of the images' SGD; auto: 100 for DSV, 1/β for DM+DKKT (so that its β·L_DM
    # part moves the images as plain DM with lr 1 does)
    lr_img: Optional[float] = None
    dkkt: DKKTConfig = field(default_factory=DKKTConfig)  # the DKKT loss
    dkkt_loss: str = "dkkt"  # registered loss (group dkkt_plugin.losses) built as DKKTLoss is
    lr_multiplier: float = 0.01  # Adam learning rate of the multipliers' parameters
    refit_every: int = 0  # refit λ by NNLS every k iterations (and at the start); 0: never
    dkkt_augment: bool = False  # score augmented copies in the DKKT term (the manifold condition)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.refit_every < 0 or not self.lr_multiplier > 0:
            raise ConfigError(f"need refit_every >= 0 and lr_multiplier > 0; got {self.refit_every}, "
                              f"{self.lr_multiplier}")

    def dkkt_config(self) -> DKKTConfig:
        """``dkkt`` with α resolved: 1.0 for cos, the paper's value for this pipc with l1 / l2."""
        if self.dkkt.alpha is not None:
            return self.dkkt
        alpha = 1.0 if self.dkkt.distance == "cos" else paper_alpha(self.pipc)
        return dataclasses.replace(self.dkkt, alpha=alpha)


@dataclass(frozen=True)
class DKKTMethodConfig(DSVMethodConfig):
    """DM+DKKT settings: DSV's plus the DM term."""

    beta: Optional[float] = None  # the DM ratio β; auto: the paper's 0.01 at ipc 50, 0.001 otherwise
    dm_loss: str = "dm"  # registered loss (group dkkt_plugin.losses) built as DMLoss is

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta is not None and self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")

    @property
    def resolved_beta(self) -> float:
        return paper_beta(self.ipc) if self.beta is None else self.beta


class DSV(Method):
    """Deep Support Vectors as a distillation method: the DKKT loss alone, from noise or real images."""

    name = "dsv"
    config_class = DSVMethodConfig
    needs_edge_model = True
    default_init = "noise"

    @property
    def beta(self) -> float:
        """Weight of the DM term (0: DSV has none)."""
        return 0.0

    @property
    def image_lr(self) -> float:
        if self.config.lr_img is not None:
            return self.config.lr_img
        return 1.0 / self.beta if self.beta > 0 else DSV_LR

    def setup(self) -> None:
        super().setup()
        cfg = self.config
        augment = self.augmenter()
        self.dkkt = self.loss(cfg.dkkt_loss, self.data.edge_model, self.images.shape[0], cfg.dkkt_config(),
                              augment=augment if cfg.dkkt_augment else None)
        self.multiplier_optimizer = torch.optim.Adam(self.dkkt.parameters(), lr=cfg.lr_multiplier)
        self.setup_data_term(augment)
        if cfg.refit_every:
            self.dkkt.fit_multipliers(self.images.detach(), self.labels)

    def setup_data_term(self, augment) -> None:
        """Build the data term added to the DKKT loss (none for DSV)."""

    def data_term(self) -> Optional[torch.Tensor]:
        """The data term of this step, unweighted (None for DSV)."""
        return None

    def step(self, iteration: int) -> dict[str, float]:
        terms = self.dkkt.terms(self.images, self.labels)
        loss = terms.total
        log = {}
        data = self.data_term()
        if data is not None:
            loss = loss + self.beta * data
            log["dm"] = float(data.detach())
        check_finite(loss, f"{self.name} loss at iteration {iteration}")
        self.optimizer.zero_grad(set_to_none=True)
        self.multiplier_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.multiplier_optimizer.step()
        self.dkkt.project_()
        k = self.config.refit_every
        if k and (iteration + 1) % k == 0:
            self.dkkt.fit_multipliers(self.images.detach(), self.labels)
        lam = self.dkkt.multipliers.detach()
        stat = float(terms.stationarity.detach())
        return {
            "loss": float(loss.detach()), **log,
            "primal": float(terms.primal.detach()), "stationarity": stat, "floor": terms.floor,
            "stat_ratio": stat / terms.floor if terms.floor else float("nan"),
            "edge_accuracy": terms.accuracy,
            "lambda_min": float(lam.min()), "lambda_median": float(lam.median()),
            "lambda_max": float(lam.max()),
            "lambda_zero": int((lam <= 1e-6 * lam.max().clamp(min=1e-30)).sum()),
        }

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"rho": self.dkkt.rho.detach()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.dkkt.rho.copy_(state["rho"])

    def extra_outputs(self) -> dict[str, torch.Tensor]:
        return {"multipliers": self.dkkt.multipliers.detach().cpu()}


class DMDKKT(DSV):
    """The practical paper's method: DKKT (model knowledge) + β · DM (data knowledge)."""

    name = "dm_dkkt"
    config_class = DKKTMethodConfig

    @property
    def default_init(self) -> str:  # the paper: noise for ipc 1, real images otherwise
        return "noise" if self.config.ipc == 1 else "real"

    @property
    def beta(self) -> float:
        return self.config.resolved_beta

    def setup_data_term(self, augment) -> None:
        if self.beta > 0:
            self.dm = self.loss(self.config.dm_loss, self.fresh_net(), augment=augment, generator=self.generator)

    def data_term(self) -> Optional[torch.Tensor]:
        if self.beta <= 0:
            return None
        real, real_labels = self.sample_real()
        return self.dm(real, real_labels, self.images, self.labels)
