"""The typed settings of the built-in methods, losses, pretraining and evaluation, importable without torch.

Every class here is a frozen dataclass whose fields carry a type hint and their help text
(``field(default=..., metadata={"help": ...})``): the command line builds its flags (and their
help) from them before torch is imported, so ``dkkt --help`` answers at once. The classes are
also importable from the modules that use them (``dkkt_plugin.methods``, ``dkkt_plugin.losses``,
``dkkt_plugin.pretrain``); they are the same objects. :data:`METHOD_CONFIGS` names the config
class of every built-in method.

Example:
    >>> METHOD_CONFIGS["dm_dkkt"].__name__, DKKTMethodConfig(ipc=50).resolved_beta
    ('DKKTMethodConfig', 0.01)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

from .config import Pipc, parse_pipc
from .errors import ConfigError

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"


# -- pretraining --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainConfig:
    """What ``dkkt pretrain`` trains. Weight decay makes θ* a stationary point of the
    regularised loss, so the DKKT stationarity condition has an exact solution
    (docs/method.md, 'Deep-KKT conditions')."""

    dataset: str = field(default="fashion_mnist", metadata={
        "help": "registered dataset loader (group dkkt_plugin.datasets)"})
    data_root: Optional[str] = field(default=None, metadata={
        "help": "dataset folder; auto: the loader's default location"})
    width: int = field(default=128, metadata={"help": "ConvNet width (the convnet architectures only)"})
    depth: int = field(default=3, metadata={"help": "ConvNet depth (convnet, convnet_bn, convnet_nn only)"})
    epochs: int = field(default=3, metadata={
        "help": "passes over the full training set (3 epochs: about 40 min on one CPU core)"})
    batch_size: int = field(default=256, metadata={"help": "minibatch size"})
    lr: float = field(default=0.05, metadata={"help": "SGD learning rate (cosine schedule)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=5e-3, metadata={
        "help": "as the DSV paper's teacher; makes θ* a KKT point of the regularised loss"})
    seed: int = field(default=0, metadata={"help": "initial weights and minibatch order"})
    refit_classifier: bool = field(default=False, metadata={"help": (
        "after SGD, solve the classifier layer exactly (full-batch L-BFGS on frozen features) for the "
        "weight-decayed loss, so the classifier is a true KKT point: θ_c = -(1/(wd N)) Σ ∇θ_c ℓ_i")})
    arch: str = field(default="convnet", metadata={"help": (
        "the architecture: a model of the group dkkt_plugin.models (convnet, convnet_bn, convnet_nn, "
        "convnet_d1..d4, mlp, lenet, alexnet, alexnet_bn, vgg11, vgg11_bn, resnet18, resnet18_bn, or a plugin's), "
        "module.path:factory, torchvision:NAME or timm:NAME; the checkpoint records it")})

    def __post_init__(self) -> None:
        if min(self.width, self.depth, self.epochs, self.batch_size) < 1 or not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(f"pretrain needs width, depth, epochs, batch_size >= 1, lr > 0, weight_decay >= 0; "
                              f"got {self}")


# -- the DKKT loss ------------------------------------------------------------------------------
DISTANCES = ("l1", "l2", "cos")
PRIMALS = ("ce", "boundary")
MULTIPLIERS = ("log", "projected")
SCALES = ("none", "floor")
STATIONARITIES = ("margin", "ce")
DEFAULT_ALPHA = {"cos": 1.0, "l1": 0.1, "l2": 0.1}  # α when DKKTConfig.alpha is None
BALANCES = ("fixed", "grad")  # how the DKKT term is weighed against a host loss (DKKTConfig.balance)
BALANCE_MODES = ("step", "running")  # which gradient norms the grad balance compares

BALANCE_HELP = ("how the term is weighed against a host loss (DKKTLoss.backward_with and the methods with one): "
                "fixed: the weights as given (α here, the method's β on the host loss); grad: the term's image "
                "gradient is rescaled each step to balance_fraction times the host loss's (GradBalance; "
                "docs/method.md, 'Adding the term to another method')")
"""The help of ``DKKTConfig.balance``, whose default :class:`BalancedDKKTConfig` changes."""

DEFAULT_BALANCE_FRACTION = 0.3
"""``DKKTConfig.balance_fraction``: the DKKT term's image gradient as a fraction of the host
loss's under ``balance="grad"``: the fraction a validation sweep of 0.03 / 0.1 / 0.3 in DM, DC
and DSA chose on Fashion-MNIST (docs/method.md, 'Adding the term to another method'); the host
loss still leads each step. Set another per run with ``--dkkt.balance-fraction F`` or
``DKKTLoss(..., balance="grad", balance_fraction=F)``."""


@dataclass(frozen=True)
class DKKTConfig:
    """Settings of :class:`DKKTLoss`. Defaults are the best measured so far on a validation split
    of Fashion-MNIST's training set (docs/method.md, 'Defaults and why').

    Example:
        >>> DKKTConfig(distance="l1").resolved_alpha
        0.1
    """

    alpha: Optional[float] = field(default=None, metadata={"help": (
        "stationarity rate α; auto: 1.0 with the cos distance (dm_dkkt above ipc 1: 0.01); with l1 / l2 the paper's "
        "0.1 / 0.01 / 0.001 for pipc below 50 / 50 / above 50 or all (DKKTLoss alone: 0.1)")})
    distance: Literal["l1", "l2", "cos"] = field(default="cos", metadata={"help": (
        "l1, l2 (squared), averaged within each tensor; cos: 1 - cos per output row (scale-free; the l1 / l2 terms' "
        "image gradients are ~1e-5..1e-3, too small to move anything: docs/method.md, 'Stationarity')")})
    primal: Literal["ce", "boundary"] = field(default="boundary", metadata={
        "help": "ce: mean cross-entropy; boundary: cross-entropy only where argmax f(x) != y (DSV Eq. 7)"})
    multiplier: Literal["log", "projected"] = field(default="log", metadata={
        "help": "log: λ = exp(ρ); projected: λ = ρ clamped at 0"})
    lambda_init: float = field(default=1.0, metadata={
        "help": "initial λ (refit with fit_multipliers() to start at the right scale)"})
    params: Literal["all", "weights", "classifier"] = field(default="classifier", metadata={"help": (
        "which θ* tensors enter L_stat: all, weights (ndim >= 2) or classifier (the last nn.Linear; best on the "
        "validation split: ten images can match its rank-10 gradient)")})
    scale: Literal["none", "floor"] = field(default="none", metadata={
        "help": "floor: divide each tensor's distance by its floor"})
    tv_weight: float = field(default=0.0, metadata={"help": "weight of the total-variation image prior"})
    norm_weight: float = field(default=0.0, metadata={"help": "weight of the mean squared pixel prior"})
    stationarity: Literal["ce", "margin"] = field(default="margin", metadata={"help": (
        "per-sample term whose λ-weighted gradient must equal -θ*: margin (-(f_y - max_{k≠y} f_k), Haim et al.; it "
        "does not vanish on confident images as CE's does: DSV from noise 60.1 % vs 54.5 % on the validation "
        "split), or ce (cross-entropy, the DSV paper's ℓ)")})
    soft_relu: float = field(default=0.0, metadata={"help": (
        "> 0: in the DKKT term the edge model's ReLUs get the derivative sigmoid(soft_relu · z) (forward unchanged; "
        "Haim et al. use 19..150), so the double backward reaches the images")})
    lambda_min: float = field(default=0.0, metadata={
        "help": "> 0: the penalty 5·(λ_min - λ)₊² keeps the multipliers above λ_min (Haim et al.)"})
    balance: Literal["fixed", "grad"] = field(default="fixed", metadata={"help": BALANCE_HELP})
    balance_fraction: float = field(default=DEFAULT_BALANCE_FRACTION, metadata={"help": (
        "with balance grad: the term's image-gradient norm as a fraction of the host loss's (0: the host method "
        "exactly)")})
    balance_mode: Literal["step", "running"] = field(default="step", metadata={"help": (
        "with balance grad: step compares this step's two gradient norms; running their exponential moving averages")})
    balance_momentum: float = field(default=0.9, metadata={
        "help": "with balance_mode running: the moving averages' momentum"})

    def __post_init__(self) -> None:
        for name, allowed in (("distance", DISTANCES), ("primal", PRIMALS), ("multiplier", MULTIPLIERS),
                              ("scale", SCALES), ("stationarity", STATIONARITIES),
                              ("balance", BALANCES), ("balance_mode", BALANCE_MODES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"DKKTConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if (self.alpha is not None and self.alpha < 0) or self.tv_weight < 0 or self.norm_weight < 0:
            raise ConfigError("DKKTConfig weights (alpha, tv_weight, norm_weight) must be >= 0")
        if not self.lambda_init > 0:
            raise ConfigError(f"DKKTConfig.lambda_init must be > 0, got {self.lambda_init}")
        if self.soft_relu < 0 or self.lambda_min < 0:
            raise ConfigError(f"DKKTConfig: soft_relu and lambda_min must be >= 0; got {self.soft_relu}, "
                              f"{self.lambda_min}")
        if not 0 <= self.balance_fraction < float("inf") or not 0 <= self.balance_momentum < 1:
            raise ConfigError(f"DKKTConfig needs a finite balance_fraction >= 0 and 0 <= balance_momentum < 1; got "
                              f"{self.balance_fraction}, {self.balance_momentum} (e.g. --dkkt.balance-fraction 0.1)")

    @property
    def resolved_alpha(self) -> float:
        """α, with None resolved by the distance (:data:`DEFAULT_ALPHA`)."""
        return DEFAULT_ALPHA[self.distance] if self.alpha is None else self.alpha


# -- every method ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistillConfig:
    """Settings shared by every method (DatasetCondensation's names and defaults)."""

    dataset: str = field(default="fashion_mnist", metadata={
        "help": "registered dataset loader (group dkkt_plugin.datasets)"})
    data_root: Optional[str] = field(default=None, metadata={"help": (
        "dataset folder; auto: the loader's default (fashion_mnist: $DKKT_FASHION_MNIST_ROOT, else "
        "/usr/share/datasets/fashion-mnist; cifar10: $DKKT_CIFAR10_ROOT)")})
    ipc: int = field(default=1, metadata={"help": "synthetic images per class"})
    pipc: Pipc = field(default=10, metadata={"help": "real images per class the server may see: a positive int or all"})
    iterations: int = field(default=1000, metadata={"help": "distillation iterations"})
    lr_img: float = field(default=1.0, metadata={"help": "learning rate of the images' SGD"})
    momentum: float = field(default=0.5, metadata={"help": "momentum of the images' SGD"})
    batch_real: int = field(default=256, metadata={
        "help": "real images per class per iteration (all of them when pipc is smaller)"})
    init: str = field(default="auto", metadata={"help": (
        "noise, real, dsv or any registered initializer; auto: the method's default_init (dm, dm_star, dc, dsa: "
        "real; dsv: noise; dm_dkkt: noise at ipc 1, real above)")})
    edge_model: Optional[str] = field(default=None, metadata={"help": (
        "the pretrained edge model (methods that need one): a packaged model's name (fmnist: the Fashion-MNIST "
        "ConvNet shipped with dkkt-plugin) or a checkpoint written by `dkkt pretrain`")})
    net_width: int = field(default=128, metadata={"help": "ConvNet width of the embedding / matching networks"})
    net_depth: int = field(default=3, metadata={"help": "ConvNet depth of the embedding / matching networks"})
    seed: int = field(default=0, metadata={
        "help": "chooses the practical subset and drives every random draw of the run"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "pipc", parse_pipc(self.pipc))
        if self.ipc < 1 or self.iterations < 0 or self.batch_real < 1 or self.net_width < 1 or self.net_depth < 1:
            raise ConfigError(f"need ipc >= 1, iterations >= 0, batch_real >= 1, net_width >= 1, net_depth >= 1; "
                              f"got ipc={self.ipc}, iterations={self.iterations}, batch_real={self.batch_real}, "
                              f"net_width={self.net_width}, net_depth={self.net_depth}")
        if self.lr_img is not None and not self.lr_img > 0:
            raise ConfigError(f"lr_img must be > 0, got {self.lr_img} (e.g. --lr-img 1.0)")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")


@dataclass(frozen=True)
class AugmentConfig:
    """Which registered Siamese augmentation a method uses, and its strategy."""

    name: str = field(default="dsa", metadata={"help": "registered augmentation (group dkkt_plugin.augmentations)"})
    strategy: str = field(default=DSA_STRATEGY, metadata={
        "help": "the augmentation's strategy; '' or none: no augmentation"})


@dataclass(frozen=True)
class AugmentedConfig(DistillConfig):
    """Settings of a method that augments real and synthetic images alike (DM, DSA, DSV, ...)."""

    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={"help": "the Siamese augmentation"})


# -- DM, DM* -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DMConfig(AugmentedConfig):
    """DM / DM* settings (DatasetCondensation's defaults: SGD lr 1.0, momentum 0.5, batch_real 256)."""

    dm_loss: str = field(default="dm", metadata={
        "help": "registered loss (group dkkt_plugin.losses) built as DMLoss is: (net, augment=, reinit=, generator=)"})


# -- DC, DSA -----------------------------------------------------------------------------------
# DatasetCondensation's (outer_loop, inner_loop) per ipc; ipc between two rows takes the next row.
LOOPS = ((1, (1, 1)), (10, (10, 50)), (20, (20, 25)), (30, (30, 20)), (40, (40, 15)), (50, (50, 10)))


def default_loops(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) of the reference for ``ipc`` (ipc 3 uses ipc 10's loops)."""
    for limit, loops in LOOPS:
        if ipc <= limit:
            return loops
    return LOOPS[-1][1]


@dataclass(frozen=True)
class GMConfig(DistillConfig):
    """DC settings (reference defaults); DC matches un-augmented gradients."""

    lr_img: float = field(default=0.1, metadata={"help": "learning rate of the images' SGD"})
    lr_net: float = field(default=0.01, metadata={"help": "learning rate of the matching network's SGD"})
    outer_loop: int = field(default=0, metadata={"help": (
        "matching steps per iteration; 0: by ipc, as in the reference: 1 / 10 / 20 / 30 / 40 / 50 for ipc 1 / up to "
        "10 / 20 / 30 / 40 / above 40")})
    inner_loop: int = field(default=0, metadata={"help": (
        "network training epochs between two matching steps; 0: by ipc, as in the reference: 1 / 50 / 25 / 20 / 15 "
        "/ 10 for ipc 1 / up to 10 / 20 / 30 / 40 / above 40")})
    batch_train: int = field(default=256, metadata={"help": "minibatch of the inner network training"})
    metric: Literal["ours", "mse", "cos"] = field(default="ours", metadata={
        "help": "ours: layer-wise sum of (1 - cos) over output rows"})
    matching_loss: str = field(default="gradient_matching", metadata={
        "help": "registered loss (group dkkt_plugin.losses) built as GradientMatchingLoss is: (metric, augment=)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.outer_loop < 0 or self.inner_loop < 0 or self.batch_train < 1 or not self.lr_net > 0:
            raise ConfigError(f"need outer_loop >= 0, inner_loop >= 0, batch_train >= 1, lr_net > 0; got "
                              f"{self.outer_loop}, {self.inner_loop}, {self.batch_train}, {self.lr_net}")


@dataclass(frozen=True)
class DSAConfig(GMConfig):
    """DSA settings: DC's plus the Siamese augmentation."""

    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={"help": "the Siamese augmentation"})


# -- DSV, DM+DKKT ------------------------------------------------------------------------------
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

    lr_img: Optional[float] = field(default=None, metadata={
        "help": "learning rate of the images' optimiser; auto: 0.05 with adam, 100 with sgd"})
    image_optimizer: Literal["sgd", "adam"] = field(default="adam", metadata={"help": (
        "the images' optimiser (sgd: with --momentum); DSV: adam (54.5 % vs 52.5 % from noise on the validation "
        "split, and it keeps the images in range without tuning the lr)")})
    dkkt: DKKTConfig = field(default_factory=DKKTConfig, metadata={"help": "the DKKT loss"})
    dkkt_loss: str = field(default="dkkt", metadata={
        "help": "registered loss (group dkkt_plugin.losses) built as DKKTLoss is"})
    lr_multiplier: float = field(default=0.01, metadata={"help": "learning rate of the multipliers' own optimiser"})
    multiplier_optimizer: Literal["adam", "sgd"] = field(default="adam", metadata={
        "help": "the multipliers' optimiser (Haim et al.: sgd)"})
    refit_every: int = field(default=0, metadata={
        "help": "refit λ by NNLS every k iterations (and at the start); 0: never"})
    manifold_weight: float = field(default=0.0, metadata={
        "help": "η: add η·L_DKKT(A(X)) over augmented copies, the manifold condition (the DSV authors use 5)"})
    manifold_strategy: str = field(default="crop_flip_scale_rotate", metadata={
        "help": "the manifold term's augmentation strategy (registered augment.name, one draw per image)"})
    downscale: tuple[int, ...] = field(default=(4, 2), metadata={"help": (
        "synthesise at 1/f of the image side for each factor f first (4,2: 7 then 14 px for 28 px), upscale_every "
        "iterations each, then at full size: the images are projected onto upsampled low-resolution ones after "
        "every step. DSV default 4,2 (61.6 % vs 60.1 % at full resolution on the validation split, and smoother: "
        "high-frequency share 0.12 vs 0.23); none: full size only")})
    upscale_every: int = field(default=300, metadata={"help": "iterations per entry of downscale"})

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
        """``dkkt`` with α resolved (1.0 for cos, the paper's value for this pipc with l1 / l2)."""
        cfg = self.dkkt
        if cfg.alpha is None:
            cfg = dataclasses.replace(cfg, alpha=1.0 if cfg.distance == "cos" else paper_alpha(self.pipc))
        return cfg


COS_ALPHA_ABOVE_IPC1 = 0.01  # DM+DKKT's α with cos at ipc > 1 (measured at ipc 10: α 1 cost DM 2.3 points)


@dataclass(frozen=True)
class DKKTMethodConfig(DSVMethodConfig):
    """DM+DKKT settings: DSV's plus the DM term."""

    lr_img: Optional[float] = field(default=None, metadata={"help": (
        "learning rate of the images' optimiser; auto: 1/β (with β auto: 1000 below ipc 50, 100 from ipc 50), so "
        "that the β·L_DM part moves the images as plain DM with lr 1 does; with β 0: 0.05 with adam, 100 with sgd")})
    beta: Optional[float] = field(default=None, metadata={
        "help": "the DM ratio β; auto: the paper's 0.01 from ipc 50, 0.001 below"})
    dm_loss: str = field(default="dm", metadata={
        "help": "registered loss (group dkkt_plugin.losses) built as DMLoss is"})
    image_optimizer: Literal["sgd", "adam"] = field(default="sgd", metadata={
        "help": "the images' optimiser (sgd: with --momentum, as DM)"})
    downscale: tuple[int, ...] = field(default=(), metadata={
        "help": "as DSV's; DM+DKKT: full size only (the DM part adds the detail)"})

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


# -- DC+DKKT, DSA+DKKT -------------------------------------------------------------------------
@dataclass(frozen=True)
class BalancedDKKTConfig(DKKTConfig):
    """:class:`DKKTConfig` whose term is balanced against the host loss by default (dc_dkkt, dsa_dkkt)."""

    balance: Literal["fixed", "grad"] = field(default="grad", metadata={"help": BALANCE_HELP})


@dataclass(frozen=True)
class GMDKKTConfig(GMConfig):
    """DC+DKKT settings: DC's (loops, matching network) plus the DKKT term of the edge model."""

    lr_img: Optional[float] = field(default=None, metadata={"help": (
        "learning rate of the images' SGD; auto: 0.1 (DC's) with dkkt.balance grad, where the matching loss's "
        "gradient enters unscaled; 0.1/β with fixed weights, so that the β·L_GM part moves the images as DC with lr "
        "0.1 does (β 1: 0.1)")})
    beta: float = field(default=1.0, metadata={"help": (
        "with dkkt.balance fixed: the loss is L_DKKT + β·L_GM (the practical paper's form, gradient matching as the "
        "data term); unused with grad")})
    dkkt: BalancedDKKTConfig = field(default_factory=BalancedDKKTConfig, metadata={"help": "the DKKT term"})
    dkkt_loss: str = field(default="dkkt", metadata={
        "help": "registered loss (group dkkt_plugin.losses) built as DKKTLoss is"})
    lr_multiplier: float = field(default=0.01, metadata={"help": "learning rate of the multipliers' own optimiser"})
    multiplier_optimizer: Literal["adam", "sgd"] = field(default="adam", metadata={
        "help": "the multipliers' optimiser"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lr_multiplier > 0 or self.beta < 0 or (self.dkkt.balance == "fixed" and not self.beta > 0):
            raise ConfigError(f"need lr_multiplier > 0 and beta > 0 (beta >= 0 with --dkkt.balance grad); got "
                              f"lr_multiplier={self.lr_multiplier}, beta={self.beta}, dkkt.balance={self.dkkt.balance}")

    def dkkt_config(self) -> DKKTConfig:
        """``dkkt`` with α resolved: 1.0 with the cos distance, the paper's value for this pipc with
        l1 / l2 (:func:`paper_alpha`)."""
        if self.dkkt.alpha is not None:
            return self.dkkt
        return dataclasses.replace(self.dkkt, alpha=1.0 if self.dkkt.distance == "cos" else paper_alpha(self.pipc))


@dataclass(frozen=True)
class DSADKKTConfig(GMDKKTConfig):
    """DSA+DKKT settings: DC+DKKT's plus the Siamese augmentation of the matching loss (the DKKT
    term scores the images unaugmented)."""

    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={"help": "the Siamese augmentation"})


# -- evaluation ---------------------------------------------------------------------------------
EVAL_PROTOCOLS = ("dm", "paper")  # the names of dkkt_plugin.evaluation.PROTOCOLS (that module needs torch)


@dataclass(frozen=True)
class EvalConfig:
    """How a synthetic set is evaluated: the evaluation flags of ``dkkt distill`` (after the
    distillation; by default none) and ``dkkt evaluate`` (which runs 5 unless told).

    Example:
        >>> EvalConfig(num_eval=3, eval_epochs=50).eval_protocol
        'dm'
    """

    num_eval: int = field(default=0, metadata={
        "help": "evaluation runs, each training a fresh network on the set (with distill, 0: no evaluation)"})
    eval_epochs: Optional[int] = field(default=None, metadata={
        "help": "scale the protocol down to this many epochs; auto: the protocol's own"})
    test_size: Optional[int] = field(default=None, metadata={"help": (
        "test each network on a stratified subset of this many test images (the same number of each class, drawn "
        "with --test-seed; a multiple of the classes) instead of all of them, and record which; none: the whole "
        "test set")})
    eval_protocol: Literal["dm", "paper"] = field(default="dm", metadata={
        "help": "dm: SGD, 1000 epochs with DSA; paper: SAM, 5000 epochs"})
    eval_seed: int = field(default=0, metadata={"help": "seed of the first evaluation run"})
    test_seed: int = field(default=0, metadata={"help": "seed of the --test-size subset"})

    def __post_init__(self) -> None:
        if self.num_eval < 0:
            raise ConfigError(f"--num-eval must be >= 0 (0: no evaluation), got {self.num_eval}")
        if self.eval_epochs is not None and self.eval_epochs < 1:
            raise ConfigError(f"--eval-epochs must be >= 1, got {self.eval_epochs}")
        if self.test_size is not None and self.test_size < 1:
            raise ConfigError(f"--test-size must be a positive integer, got {self.test_size}")
        if self.eval_protocol not in EVAL_PROTOCOLS:
            raise ConfigError(f"--eval-protocol must be one of {', '.join(EVAL_PROTOCOLS)}; got {self.eval_protocol!r}")


# The config class of every built-in method (each Method subclass names the same in config_class).
METHOD_CONFIGS: dict[str, type] = {"dm": DMConfig, "dm_star": DMConfig, "dc": GMConfig, "dsa": DSAConfig,
                                   "dsv": DSVMethodConfig, "dm_dkkt": DKKTMethodConfig,
                                   "dc_dkkt": GMDKKTConfig, "dsa_dkkt": DSADKKTConfig}
