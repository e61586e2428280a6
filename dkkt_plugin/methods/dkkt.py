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

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

import torch
import torch.nn.functional as F

from .. import registry
from ..errors import ConfigError
from ..losses.dkkt import DKKTConfig
from .base import AugmentedConfig, Method, check_finite, precision_in_force
from .dm import speed_options

DSV_LR = 100.0  # image SGD lr of the DKKT loss alone (DSV), when lr_img is not given
DSV_ADAM_LR = 0.05  # image Adam lr of DSV, when lr_img is not given


def paper_alpha(pipc) -> float:
    """The paper's stationarity rate: 0.1 / 0.01 / 0.001 for pipc below 50 / 50 / above 50 or all
    (the paper's pipc 10 / 50 / all)."""
    if pipc == "all" or (isinstance(pipc, int) and pipc > 50):
        return 0.001
    return 0.1 if pipc < 50 else 0.01


def paper_beta(ipc: int) -> float:
    """The paper's DM ratio: 0.01 from ipc 50 (the paper's ipc 50), 0.001 below."""
    return 0.01 if ipc >= 50 else 0.001


@dataclass(frozen=True)
class DSVMethodConfig(AugmentedConfig):
    """DSV settings: the DKKT loss alone, from noise (default) or real images."""

    lr_img: Optional[float] = None  # learning rate of the images' optimiser; auto: 0.05 with adam, 100 with sgd
    # the images' optimiser (sgd: with --momentum); DSV: adam (54.5 % vs 52.5 % from noise on the
    # validation split, and it keeps the images in range without tuning the lr)
    image_optimizer: Literal["sgd", "adam"] = "adam"
    dkkt: DKKTConfig = field(default_factory=DKKTConfig)  # the DKKT loss
    dkkt_loss: str = "dkkt"  # registered loss (group dkkt_plugin.losses) built as DKKTLoss is
    lr_multiplier: float = 0.01  # learning rate of the multipliers' own optimiser
    multiplier_optimizer: Literal["adam", "sgd"] = "adam"  # the multipliers' optimiser (Haim et al.: sgd)
    refit_every: int = 0  # refit λ by NNLS every k iterations (and at the start); 0: never
    # η: add η·L_DKKT(A(X)) over augmented copies, the manifold condition (the DSV authors use 5)
    manifold_weight: float = 0.0
    # the manifold term's augmentation strategy (registered augment.name, one draw per image)
    manifold_strategy: str = "crop_flip_scale_rotate"
    # synthesise at 1/f of the image side for each factor f first (4,2: 7 then 14 px for 28 px),
    # upscale_every iterations each, then at full size: the images are projected onto upsampled
    # low-resolution ones after every step. DSV default 4,2 (61.6 % vs 60.1 % at full resolution
    # on the validation split, and smoother: high-frequency share 0.12 vs 0.23); none: full size only
    downscale: tuple[int, ...] = (4, 2)
    upscale_every: int = 300  # iterations per entry of downscale
    # the synthetic images' passes through a ConvNet with each block's norm, ReLU and pooling fused
    # on the CPU: the DKKT term's edge model (DKKTLoss(fused=True)) and DM+DKKT's DM term (as DM's)
    fused_syn: bool = True
    # what dkkt.precision "auto" means here: DSV computes in fp32 (a bf16 feature pass moved its
    # accuracy beyond what float rounding alone does, benchmarks/results/precision-cpu; opt in with
    # --dkkt.precision bf16); DM+DKKT keeps "auto" (bf16 where native: no change beyond seed noise)
    auto_precision: ClassVar[str] = "fp32"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.refit_every < 0 or not self.lr_multiplier > 0 or self.manifold_weight < 0:
            raise ConfigError(f"need refit_every >= 0, lr_multiplier > 0, manifold_weight >= 0; got "
                              f"{self.refit_every}, {self.lr_multiplier}, {self.manifold_weight}")
        if self.downscale and (self.upscale_every < 1 or min(self.downscale) < 1):
            raise ConfigError(f"downscale {self.downscale} needs upscale_every >= 1 and factors >= 1 "
                              f"(got upscale_every={self.upscale_every})")

    def factor_at(self, iteration: int) -> Optional[int]:
        """The downscale factor in force at ``iteration`` (None: full resolution)."""
        stage = iteration // self.upscale_every if self.downscale else 0
        return self.downscale[stage] if stage < len(self.downscale) else None

    def dkkt_config(self) -> DKKTConfig:
        """``dkkt`` with α resolved (1.0 for cos, the paper's value for this pipc with l1 / l2) and
        precision ``"auto"`` resolved by :attr:`auto_precision`."""
        cfg = self.dkkt
        if cfg.alpha is None:
            cfg = dataclasses.replace(cfg, alpha=1.0 if cfg.distance == "cos" else paper_alpha(self.pipc))
        if cfg.precision == "auto":
            cfg = dataclasses.replace(cfg, precision=self.auto_precision)
        return cfg


COS_ALPHA_ABOVE_IPC1 = 0.01  # DM+DKKT's α with cos at ipc > 1 (measured at ipc 10: α 1 cost DM 2.3 points)


@dataclass(frozen=True)
class DKKTMethodConfig(DSVMethodConfig):
    """DM+DKKT settings: DSV's plus the DM term."""

    # learning rate of the images' optimiser; auto: 1/β (with β auto: 1000 below ipc 50, 100 from
    # ipc 50), so that the β·L_DM part moves the images as plain DM with lr 1 does; with β 0: 0.05
    # with adam, 100 with sgd
    lr_img: Optional[float] = None
    beta: Optional[float] = None  # the DM ratio β; auto: the paper's 0.01 from ipc 50, 0.001 below
    dm_loss: str = "dm"  # registered loss (group dkkt_plugin.losses) built as DMLoss is
    # the DM term's real embedding, as DM's: bf16, fp32 or auto: bf16 where the hardware computes
    # bf16 natively (CUDA, CPUs with AVX-512 BF16 or AMX), else fp32
    real_precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile_real: bool = False  # torch.compile the DM term's real embedding, as DM's
    fused_real: bool = True  # the fused CPU kernels for that embedding, as DM's
    image_optimizer: Literal["sgd", "adam"] = "sgd"  # the images' optimiser (sgd: with --momentum, as DM)
    downscale: tuple[int, ...] = ()  # as DSV's; DM+DKKT: full size only (the DM part adds the detail)
    auto_precision: ClassVar[str] = "auto"  # bf16 DKKT feature pass where native (see DSV's)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta is not None and self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")

    @property
    def resolved_beta(self) -> float:
        return paper_beta(self.ipc) if self.beta is None else self.beta

    def dkkt_config(self) -> DKKTConfig:
        """As DSV's, but with the cos distance α is 1.0 at ipc 1 and 0.01 above: on the validation
        split at ipc 10, α 1 put DM+DKKT 2.3 points below DM and α 0.01 1.2 points above it."""
        if self.dkkt.alpha is None and self.dkkt.distance == "cos" and self.ipc > 1:
            return dataclasses.replace(super().dkkt_config(), alpha=COS_ALPHA_ABOVE_IPC1)
        return super().dkkt_config()


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
        self.dkkt = self.loss(cfg.dkkt_loss, self.data.edge_model, self.images.shape[0], cfg.dkkt_config(),
                              **({} if cfg.fused_syn else {"fused": False}))
        opt = torch.optim.Adam if cfg.multiplier_optimizer == "adam" else torch.optim.SGD
        self.multiplier_optimizer = opt(self.dkkt.parameters(), lr=cfg.lr_multiplier)
        self.manifold = None
        if cfg.manifold_weight > 0:
            make = registry.load("augmentations", cfg.augment.name)
            self.manifold = make(cfg.manifold_strategy, generator=self.generator)
        self.setup_data_term(augment)
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
        loss.backward()
        loss = loss.detach()
        log = {}
        data = self.data_term()
        if data is not None:
            weighted = self.beta * data
            check_finite(weighted, f"{self.name} loss's data term at iteration {iteration}")
            weighted.backward()
            loss = loss + weighted.detach()
            log["dm"] = float(data.detach())
        self.optimizer.step()
        self.multiplier_optimizer.step()
        self.dkkt.project_()
        self._project(iteration)
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

    def load_state_dict(self, state: dict) -> None:
        opts = state["optimizers"]
        if "multiplier_optimizer" in opts:
            count = len(self.multiplier_optimizer.param_groups[0]["params"])
            opts = {**opts, "multiplier_optimizer": multiplier_optimizer_state(opts["multiplier_optimizer"], count)}
        super().load_state_dict({**state, "optimizers": opts})

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"rho": self.dkkt.rho.detach()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.dkkt.rho.copy_(state["rho"])

    def extra_outputs(self) -> dict[str, torch.Tensor]:
        return {"multipliers": self.dkkt.multipliers.detach().cpu()}

    def resolved_settings(self) -> dict:
        """The base's, plus α and the feature pass's precision as the DKKT loss runs them."""
        config = getattr(self.dkkt, "config", None) or self.config.dkkt_config()  # a plugin loss may have none
        images = self.images.detach().to(getattr(self.dkkt, "_dtype", self.images.dtype))  # as the loss scores them
        return {**super().resolved_settings(), "dkkt.alpha": config.resolved_alpha,
                "dkkt.precision": precision_in_force(self.dkkt, config.precision, images)}


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

    def resolved_settings(self) -> dict:
        """DSV's, plus β and the DM term's real precision (as DM's; with β 0 it is never run)."""
        return {**super().resolved_settings(), "beta": self.beta,
                "real_precision": precision_in_force(getattr(self, "dm", None), self.config.real_precision,
                                                     self.real)}

    def setup_data_term(self, augment) -> None:
        if self.beta > 0:
            self.dm = self.loss(self.config.dm_loss, self.fresh_net(), augment=augment, generator=self.generator,
                                real_precision=self.config.real_precision, **speed_options(self.config))

    def data_term(self) -> Optional[torch.Tensor]:
        if self.beta <= 0:
            return None
        real, real_labels = self.sample_real()
        return self.dm(real, real_labels, self.images, self.labels)
