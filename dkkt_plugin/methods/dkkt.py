"""DSV (the DKKT loss alone) and DM+DKKT (the practical paper's method).

    L_DSV   = L_primal + α · L_stat              (the DKKT loss, ``dkkt_plugin.losses.DKKTLoss``)
    L_total = L_DSV + β · L_DM                   (DM+DKKT)

The DKKT settings are one nested :class:`~dkkt_plugin.losses.DKKTConfig` (``dkkt.*`` flags).
α defaults to 1.0 with the default cos distance (DM+DKKT above ipc 1: 0.01), and to the paper's
0.1 / 0.01 / 0.001 for pipc below 50 / 50 / above 50 or all with its L1 / L2 distances; β (the DM
ratio) to 0.01 from ipc 50, 0.001 below. :meth:`DSV.resolved_config` gives every value in force. DM+DKKT's images follow SGD with momentum at lr 1/β; DSV's follow
Adam at lr 0.05 (the defaults measured best on the validation split,
benchmarks/results/dsv-search/). The multipliers follow their own optimiser (Adam by default) on
their own parameterisation. Every step logs the diagnostics of the stationarity term (its floor,
the ratio to it, the edge model's accuracy on the synthetic images and the multipliers'
distribution).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import registry
from ..errors import ConfigError
from ..settings import (COS_ALPHA_ABOVE_IPC1, DSV_ADAM_LR, DSV_LR, DKKTConfig,  # noqa: F401 (torch-free)
                        DKKTMethodConfig, DSVMethodConfig, paper_alpha, paper_beta)
from .base import Method, check_finite


def multiplier_optimizer_state(saved: dict, count: int) -> dict:
    """The multipliers' optimiser state ``saved`` for an optimiser over ``count`` tensors.

    Checkpoints written while ``DKKTLoss`` registered its edge model as a submodule list the
    model's tensors after the multipliers in this optimiser's one group (never updated: they had
    no gradient); they are dropped, so those runs resume. Any other state is returned as it is.

    Example:
        >>> old = {"state": {0: {"step": 3}}, "param_groups": [{"lr": 0.01, "params": [0, 1, 2]}]}
        >>> multiplier_optimizer_state(old, 1)
        {'state': {0: {'step': 3}}, 'param_groups': [{'lr': 0.01, 'params': [0]}]}
    """
    groups = saved["param_groups"]
    if len(groups) != 1 or len(groups[0]["params"]) <= count:
        return saved
    keep = groups[0]["params"][:count]
    return {"state": {k: v for k, v in saved["state"].items() if k in keep},
            "param_groups": [{**groups[0], "params": keep}]}


def dkkt_diagnostics(terms, multipliers: torch.Tensor) -> dict[str, float]:
    """What a method with the DKKT term logs of it: its primal and stationarity parts, the
    stationarity floor and the ratio to it, the edge model's accuracy on the synthetic images and
    the multipliers' distribution."""
    lam = multipliers.detach()
    stat = float(terms.stationarity.detach())
    return {
        "primal": float(terms.primal.detach()), "stationarity": stat, "floor": terms.floor,
        "stat_ratio": stat / terms.floor if terms.floor else float("nan"),
        "edge_accuracy": terms.accuracy,
        "lambda_min": float(lam.min()), "lambda_median": float(lam.median()),
        "lambda_max": float(lam.max()),
        "lambda_zero": int((lam <= 1e-6 * lam.max().clamp(min=1e-30)).sum()),
    }


def balancer_of(loss, config) -> Optional[torch.nn.Module]:
    """The rule that weighs the DKKT term against the host loss: the loss's own ``balancer``
    (``DKKTLoss`` with ``balance="grad"``), one built from ``config`` for a loss without one, or
    None for fixed weights."""
    if config.balance != "grad":
        return None
    from ..losses.balance import GradBalance

    return getattr(loss, "balancer", None) or GradBalance.from_config(config)


def balancer_state(balancer) -> dict[str, torch.Tensor]:
    """The balance rule's running norms for a checkpoint (``balance.*``; none for fixed weights)."""
    return {} if balancer is None else {f"balance.{k}": v.detach() for k, v in balancer.state_dict().items()}


def load_balancer_state(balancer, state: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`balancer_state` saved (a checkpoint without it leaves the rule fresh)."""
    saved = {k[len("balance."):]: v for k, v in state.items() if k.startswith("balance.")}
    if balancer is not None and saved:
        balancer.load_state_dict(saved)


class DKKTTerm:
    """What a method holding the DKKT term saves, outputs and reports, whatever its host loss:
    the multipliers' parameters and the balance rule's running norms in the checkpoint, the
    multipliers among the outputs, α as the loss runs it among the resolved settings. Mixed in
    before the host method (``class DSV(DKKTTerm, Method)``), which sets ``self.dkkt`` (the loss)
    and ``self.balancer`` (:func:`balancer_of`) in its ``setup``."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"rho": self.dkkt.rho.detach(), **balancer_state(self.balancer)}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.dkkt.rho.copy_(state["rho"])
        load_balancer_state(self.balancer, state)

    def extra_outputs(self) -> dict[str, torch.Tensor]:
        return {"multipliers": self.dkkt.multipliers.detach().cpu()}

    def resolved_settings(self) -> dict:
        """The host method's, plus α as the DKKT loss runs it."""
        config = getattr(self.dkkt, "config", None) or self.config.dkkt_config()  # a plugin loss may have none
        return {**super().resolved_settings(), "dkkt.alpha": config.resolved_alpha}


class DSV(DKKTTerm, Method):
    """Deep Support Vectors as a distillation method: the DKKT loss alone, from noise or real images."""

    name = "dsv"
    config_class = DSVMethodConfig
    needs_edge_model = True
    default_init = "noise"
    # precision "auto" means fp32 here: a bf16 feature pass moved DSV's accuracy beyond what float
    # rounding alone does (benchmarks/results/precision-cpu); --precision bf16 still applies
    needs_fp32 = True

    @property
    def beta(self) -> float:
        """Weight of the DM term (0: DSV has none)."""
        return 0.0

    @property
    def uses_real_images(self) -> bool:
        return self.beta > 0 or self.init_name == "real"

    @property
    def image_lr(self) -> float:
        if self.config.lr_img is not None:
            return self.config.lr_img
        if self.beta > 0:
            return 1.0 / self.beta
        return DSV_ADAM_LR if self.config.image_optimizer == "adam" else DSV_LR

    def setup(self) -> None:
        cfg = self.config
        if cfg.image_optimizer == "adam":
            self.optimizer = torch.optim.Adam([self.images], lr=self.image_lr)
        else:
            super().setup()  # SGD with momentum
        augment = self.augmenter()
        self.dkkt = self.loss(cfg.dkkt_loss, self.data.edge_model, self.images.shape[0], cfg.dkkt_config())
        opt = torch.optim.Adam if cfg.multiplier_optimizer == "adam" else torch.optim.SGD
        self.multiplier_optimizer = opt(self.dkkt.parameters(), lr=cfg.lr_multiplier)
        self.manifold = None
        if cfg.manifold_weight > 0:
            make = registry.load("augmentations", cfg.augment.name)
            self.manifold = make(cfg.manifold_strategy, generator=self.generator)
        self.setup_data_term(augment)
        self.balancer = balancer_of(self.dkkt, cfg.dkkt)
        if self.balancer is not None and self.beta <= 0:
            raise ConfigError(f"--dkkt.balance grad weighs the DKKT term against a host loss, and {self.name} has none "
                              "here (beta 0 or the dsv method); use --dkkt.balance fixed, or dm_dkkt with beta > 0, "
                              "dc_dkkt or dsa_dkkt")
        self._project(0)
        if cfg.refit_every:
            self.dkkt.fit_multipliers(self.images.detach(), self.labels)

    @torch.no_grad()
    def _project(self, iteration: int) -> None:
        """Keep the images upsampled low-resolution ones while a low resolution is in force."""
        factor = self.config.factor_at(iteration)
        if factor is None or factor == 1:
            return
        full = self.images.shape[-2:]
        side = (max(full[0] // factor, 1), max(full[1] // factor, 1))
        low = F.interpolate(self.images, size=side, mode="area")  # (N, C, H / f, W / f)
        self.images.copy_(F.interpolate(low, size=full, mode="bilinear", align_corners=False))

    def dkkt_terms(self):
        """The DKKT loss of this step (plus η times its value on augmented copies) and its terms."""
        terms = self.dkkt.terms(self.images, self.labels)
        loss = terms.total
        if self.manifold is not None:
            n = self.images.shape[0]
            draw = self.manifold.sample(n, device=self.images.device)
            aug = self.dkkt.terms(self.manifold(self.images, draw, torch.arange(n, device=self.images.device)),
                                  self.labels)
            loss = loss + self.config.manifold_weight * (aug.total - self.dkkt_priors(aug))
        return loss, terms

    def dkkt_priors(self, terms) -> torch.Tensor:
        cfg = self.dkkt.config
        return cfg.tv_weight * terms.tv + cfg.norm_weight * terms.norm

    def setup_data_term(self, augment) -> None:
        """Build the data term added to the DKKT loss (none for DSV)."""

    def data_term(self) -> Optional[torch.Tensor]:
        """The data term of this step, unweighted (None for DSV)."""
        return None

    def step(self, iteration: int) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        self.multiplier_optimizer.zero_grad(set_to_none=True)
        loss, terms = self.dkkt_terms()
        check_finite(loss, f"{self.name} loss at iteration {iteration}")
        # The DKKT term's backward runs (and frees its graph, double backward included) before
        # the data term builds its own: the gradient of the sum, with half the activations alive
        # at once. On our CPU, where glibc returns big freed blocks to the OS and faults them in
        # again, DM+DKKT / DM at ipc 50 went from 1.54-1.80 to 1.29-1.46 (benchmarks/results/speed-cpu).
        # With --dkkt.balance grad the two gradients are kept apart and combined by the rule
        # (the host loss is β·L_DM, whose gradient enters unscaled).
        if self.balancer is None:
            loss.backward()
        else:
            params = list(self.dkkt.parameters())
            g_dkkt, *g_params = torch.autograd.grad(loss, [self.images, *params], allow_unused=True)
        loss = loss.detach()
        log = {}
        data = self.data_term()
        if data is not None:
            weighted = self.beta * data
            check_finite(weighted, f"{self.name} loss's data term at iteration {iteration}")
            if self.balancer is None:
                weighted.backward()
            else:
                (g_host,) = torch.autograd.grad(weighted, [self.images])
                stats = self.balancer.apply([self.images], [g_host], [g_dkkt], params, g_params)
                loss = stats.scale * loss
                log["balance_scale"] = stats.scale
            loss = loss + weighted.detach()
            log["dm"] = float(data.detach())
        self.optimizer.step()
        self.multiplier_optimizer.step()
        self.dkkt.project_()
        self._project(iteration)
        k = self.config.refit_every
        if k and (iteration + 1) % k == 0:
            self.dkkt.fit_multipliers(self.images.detach(), self.labels)
        return {"loss": float(loss.detach()), **log, **dkkt_diagnostics(terms, self.dkkt.multipliers)}

    def load_state_dict(self, state: dict) -> None:
        opts = state["optimizers"]
        if "multiplier_optimizer" in opts:
            count = len(self.multiplier_optimizer.param_groups[0]["params"])
            opts = {**opts, "multiplier_optimizer": multiplier_optimizer_state(opts["multiplier_optimizer"], count)}
        super().load_state_dict({**state, "optimizers": opts})


class DMDKKT(DSV):
    """The practical paper's method: DKKT (model knowledge) + β · DM (data knowledge)."""

    name = "dm_dkkt"
    config_class = DKKTMethodConfig
    needs_fp32 = False  # bf16 where native under "auto": no change beyond seed noise (precision-cpu)

    @property
    def default_init(self) -> str:  # the paper: noise for ipc 1, real images otherwise
        return "noise" if self.config.ipc == 1 else "real"

    @property
    def beta(self) -> float:
        return self.config.resolved_beta

    def resolved_settings(self) -> dict:
        """DSV's, plus β."""
        return {**super().resolved_settings(), "beta": self.beta}

    def setup_data_term(self, augment) -> None:
        if self.beta > 0:
            self.dm = self.loss(self.config.dm_loss, self.fresh_net(), augment=augment, generator=self.generator)

    def data_term(self) -> Optional[torch.Tensor]:
        if self.beta <= 0:
            return None
        real, real_labels = self.sample_real()
        return self.dm(real, real_labels, self.images, self.labels)
