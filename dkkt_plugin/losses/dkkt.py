"""The Deep-KKT (DKKT) loss: primal feasibility + stationarity, with learned multipliers.

For a frozen classifier ``f(x; θ*)`` and synthetic images ``x_i`` with labels ``y_i``:

    L_primal = mean_i ℓ(f(x_i), y_i)          (or only over misclassified samples: "boundary")
    L_stat   = mean_k D(θ*_k, -Σ_i λ_i ∇_θk ℓ_i)   over the selected parameter tensors k

``D`` is L1 or squared L2 averaged over the tensor's entries, or ``cos``: ``1 - cos`` between
each output row of θ*_k and of ``-Σ λ g``, averaged over rows (scale-free, as DC's layer-wise
distance; its floor is 1). With weight decay ``wd`` a trained model satisfies
``θ* = -(1/(wd N)) Σ_train ∇θ ℓ``, so stationarity asks the synthetic set to reproduce the full
training set's gradient at θ*: gradient matching against data the server never sees.
    L_DKKT   = L_primal + α·L_stat + w_tv·TV(x) + w_norm·mean(x²)

``Σ_i λ_i ∇θ ℓ_i`` is computed as ONE backward of ``Σ_i λ_i ℓ_i`` with ``create_graph=True``,
restricted to the selected parameters (only they require a gradient, so with ``params=
"classifier"`` it never enters the convolutions); the images' gradient then goes through the
double backward. The multipliers ``λ_i ≥ 0`` (one per
synthetic image) are parameters of this module, learnt with the images; the classifier is only
referenced: it is scored in eval mode with detached copies of its weights, so its mode, its
``requires_grad`` flags and its ``.grad`` stay as they were.

Speed follows the process-wide switch (:mod:`dkkt_plugin.runtime`), read when the loss is
built. Precision: with a :class:`~dkkt_plugin.nets.ConvNet` edge model and only classifier
parameters selected, the frozen model's features (its blocks: the forward and the images'
backward, most of the term's cost) run under bf16 autocast under ``auto`` where the hardware
computes bf16 natively (``bf16``: everywhere; ``fp32``: never); the classifier, both losses and
the stationarity gradient stay fp32 (measured in ``benchmarks/results/precision-cpu/dkkt-*``).
Backend ``cpu``: on the CPU, the blocks of every ConvNet in the model that holds no selected
parameter run fused (:func:`dkkt_plugin.cpu.fused`; the kernels have no double backward, so the
stationarity gradient never enters them and the images' gradient crosses them once).

The stationarity *floor* is the value of L_stat when the gradient sum is zero (``D(θ*, 0)``): a
term that stays at its floor carries no model knowledge (docs/method.md, 'The stationarity
floor').
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import ConfigError
from .. import cpu, runtime
from ..nets import ConvNet, check_input
from ..settings import (DEFAULT_ALPHA, DISTANCES, MULTIPLIERS, PRIMALS, SCALES,  # noqa: F401
                        STATIONARITIES, DKKTConfig)
from .balance import BalanceStats, FixedScale, GradBalance
from .kkt import fit_multipliers_nnls, margin_logits, per_sample_grads, select_parameters, soft_relu_backward

COS_DAMPING = 1e-3  # rows whose ‖Σλg‖/‖θ*‖ is below 1e-3 of the overall ratio count as zero


@dataclass
class DKKTTerms:
    """The parts of one DKKT evaluation (tensors attached to the graph; ``total`` is the loss)."""

    total: torch.Tensor
    primal: torch.Tensor
    stationarity: torch.Tensor
    tv: torch.Tensor
    norm: torch.Tensor
    floor: float  # L_stat with a zero gradient sum
    accuracy: float  # fraction of images the frozen model assigns to their label

    def detached(self) -> dict[str, float]:
        """Plain floats of every part, for logging."""
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in vars(self).items()}


class DKKTLoss(nn.Module):
    """Deep-KKT loss of a frozen classifier, with one learnable multiplier per synthetic image.

    The loss owns the multipliers only: ``parameters()`` yields ``rho`` (their parameterisation,
    see :attr:`multipliers`) and ``state_dict()`` holds ``rho`` alone, so the module can be handed
    to an optimiser as it is: ``torch.optim.Adam([images, *dkkt.parameters()])``. The classifier
    is referenced (:attr:`model`), not registered as a submodule, and left as it is: every call
    computes its eval-mode forward with detached copies of its weights (its modules' ``training``
    flags are set to eval inside the call and restored before it returns), so the model keeps its
    mode, its parameters' ``requires_grad`` and its ``.grad`` (no gradient reaches it), and it can
    be trained further afterwards. The loss reads the model's weights at every call but computes
    the stationarity floors at construction: build a new loss after changing the weights.

    ``.to(device)`` / ``.cuda()`` / ``.double()`` move or cast the multipliers only; the model
    stays where it is (move it yourself: images, multipliers and model must share one device).
    ``load_state_dict`` also accepts state dicts that hold the model's weights under ``model.``
    (as the loss wrote them when it registered the model); those entries are ignored.

    Args:
        model: pretrained classifier mapping ``(B, C, H, W)`` images to ``(B, K)`` logits.
        num_images: number of synthetic images (one multiplier each).
        config: :class:`DKKTConfig`; keyword overrides may be given instead (``alpha=0.01``).
        augment: optional callable applied to the images before scoring (the soft "manifold"
            condition: the KKT conditions must hold for augmented copies too).
        param_filter: custom ``(name, tensor) -> bool`` selection of θ*, overriding ``config.params``.

    Shape:
        - images: ``(N, C, H, W)``, labels: ``(N,)`` long; with ``indices`` (``(B,)``) a minibatch
          ``(B, C, H, W)`` of the N images.
        - Output: scalar.

    Raises:
        ConfigError: ``model`` is not a module; or, when called, images whose channels or size
            do not fit the model or that are not on the model's device, labels that are not
            integers, not one per image, or outside the model's classes (the message names the
            shapes).

    Example:
        >>> from dkkt_plugin.nets import ConvNet
        >>> net = ConvNet(channels=1, num_classes=10, image_size=28, width=8)
        >>> dkkt = DKKTLoss(net, num_images=10, alpha=0.1)
        >>> [name for name, _ in dkkt.named_parameters()], list(dkkt.state_dict())
        (['rho'], ['rho'])
        >>> images = torch.randn(10, 1, 28, 28, requires_grad=True)
        >>> labels = torch.arange(10)
        >>> loss = dkkt(images, labels)   # scalar: add it to any other loss
        >>> loss.backward()
        >>> images.grad.shape, dkkt.multipliers.shape
        (torch.Size([10, 1, 28, 28]), torch.Size([10]))
        >>> net.training, all(p.requires_grad and p.grad is None for p in net.parameters())
        (True, True)
    """

    def __init__(
        self,
        model: nn.Module,
        num_images: int,
        config: Optional[DKKTConfig] = None,
        *,
        augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        param_filter: Optional[Callable[[str, torch.Tensor], bool]] = None,
        **overrides,
    ) -> None:
        super().__init__()
        if config is None:
            config = DKKTConfig(**overrides)
        elif overrides:
            config = DKKTConfig(**{**vars(config), **overrides})
        if not isinstance(model, nn.Module):
            raise ConfigError(f"DKKTLoss: model must be a torch.nn.Module (the frozen edge classifier), got "
                              f"{model!r}; e.g. load_edge_model(packaged_edge_model())[0]")
        if not isinstance(num_images, int) or num_images < 1:
            raise ConfigError(f"num_images must be a positive int, got {num_images!r}")
        self.config = config
        self.num_images = num_images
        self.augment = augment
        # referenced through a tuple, so nn.Module registers neither the model nor the wrapper that
        # runs its embed(): no parameters, no state_dict entries, untouched by train() / to()
        self._model = (model, _Embed(model))
        self.param_names = select_parameters(model, config.params, param_filter)
        head_only = all(n.startswith("classifier.") for n in self.param_names)
        self.speed = runtime.settings()  # the process-wide precision and backend, as built
        # the bf16 feature pass runs ConvNet's blocks (embed) and its classifier apart, which is
        # its forward (unless a subclass changed that)
        self._splits = head_only and isinstance(model, ConvNet) and type(model).forward is ConvNet.forward
        init = math.log(config.lambda_init) if config.multiplier == "log" else config.lambda_init
        self.rho = nn.Parameter(torch.full((num_images,), init, device=_device_of(model)))
        # images are scored in the model's dtype (a float64 model works)
        self._dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), self.rho.dtype)
        # Per-tensor floors D(θ*_k, 0), fixed for a frozen model.
        theta = dict(model.named_parameters())
        self._floors = [self._dist(theta[n].detach(), torch.zeros_like(theta[n])).item()
                        for n in self.param_names]
        # balance="grad": the rule of backward_with (its running norms are buffers: state_dict
        # then holds balancer.* beside rho)
        self.balancer = GradBalance.from_config(config) if config.balance == "grad" else None

    @property
    def model(self) -> nn.Module:
        """The classifier the loss scores the images with (referenced, never modified)."""
        return self._model[0]

    # -- multipliers ---------------------------------------------------------------------------
    @property
    def multipliers(self) -> torch.Tensor:
        """λ ≥ 0, shape (num_images,)."""
        if self.config.multiplier == "log":
            return self.rho.exp()
        return self.rho.clamp(min=0.0)

    @torch.no_grad()
    def set_multipliers(self, lam: torch.Tensor, min_value: float = 1e-8) -> None:
        """Set λ (shape (num_images,)); with the log parameterisation, zeros become ``min_value``."""
        lam = torch.as_tensor(lam, dtype=self.rho.dtype, device=self.rho.device).reshape(-1)
        if lam.numel() != self.num_images or bool((lam < 0).any()):
            raise ConfigError(f"need {self.num_images} non-negative multipliers, got shape {tuple(lam.shape)}")
        self.rho.copy_(lam.clamp(min=min_value).log() if self.config.multiplier == "log" else lam)

    @torch.no_grad()
    def project_(self) -> None:
        """Keep λ ≥ 0 after an optimizer step (needed only for ``multiplier='projected'``)."""
        if self.config.multiplier == "projected":
            self.rho.clamp_(min=0.0)

    def fit_multipliers(self, images: torch.Tensor, labels: torch.Tensor, chunk_size: int = 64) -> float:
        """Set λ to the non-negative least-squares fit of ``θ* ≈ -Σ λ_i g_i`` (squared-L2 D).

        Returns the relative residual ``‖θ* + Σ λ_i g_i‖ / ‖θ*‖`` in the weighted norm that
        matches this loss's per-tensor averaging.
        """
        x = self.augment(images) if self.augment is not None else images
        with eval_mode(self.model):
            grads = per_sample_grads(self.model, self.param_names, x.detach(), labels, chunk_size,
                                     loss=self.config.stationarity)
        lam, rel = fit_multipliers_nnls(self._theta(), grads, self._row_weights())
        self.set_multipliers(lam)
        return rel

    # -- loss ----------------------------------------------------------------------------------
    @property
    def floor(self) -> float:
        """L_stat when the gradient sum is zero (1 for the floor scale, and for cos: its per-tensor
        floors are exactly 1)."""
        if self.config.scale == "floor":
            return 1.0
        return sum(self._floors) / len(self._floors)

    def forward(self, images: torch.Tensor, labels: torch.Tensor,
                indices: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The scalar DKKT loss; see :meth:`terms` for its parts."""
        return self.terms(images, labels, indices).total

    def terms(self, images: torch.Tensor, labels: torch.Tensor,
              indices: Optional[torch.Tensor] = None) -> DKKTTerms:
        """Evaluate every part of the loss for ``images`` (all N, or the rows ``indices``)."""
        lam = self._check(images, labels, indices)
        x = self.augment(images) if self.augment is not None else images
        x = x.to(self._dtype)
        theta = {n: p.detach().requires_grad_(n in self.param_names)
                 for n, p in self.model.named_parameters()}
        params = {**theta, **dict(self.model.named_buffers())}
        with eval_mode(self.model), soft_relu_backward(self.model, self.config.soft_relu), \
                cpu.fused(self.model, differentiated=self.param_names, enabled=self.speed.backend == "cpu"):
            # per-sample models (e.g. ConvNet in eval mode) run in cache-sized chunks; the chunks'
            # graphs stay separate, so both backward passes also run chunk by chunk
            chunk = cpu.default_chunk_size(x.device) if getattr(self.model, "per_sample", False) else x.shape[0]
            if self.uses_bf16(x):
                head = {n[len("classifier."):]: t for n, t in theta.items() if n.startswith("classifier.")}
                logits = torch.cat([functional_call(self.model.classifier, head,
                                                    (self._embed_bf16(params, xc).float(),))
                                    for xc in x.split(max(chunk, 1))])  # (B, K) fp32
            else:
                logits = torch.cat([functional_call(self.model, params, (xc,))
                                    for xc in x.split(max(chunk, 1))])  # (B, K)
        _check_label_range(labels, logits.shape[1])
        losses = F.cross_entropy(logits, labels, reduction="none")  # (B,)
        correct = logits.argmax(1) == labels  # (B,)
        if self.config.primal == "boundary":
            primal = (losses * (~correct)).mean()
        else:
            primal = losses.mean()
        if self.config.resolved_alpha > 0:
            per_sample = losses if self.config.stationarity == "ce" else -margin_logits(logits, labels)  # (B,)
            # Σ λ_i ∇θ ℓ_i as one backward, kept in the graph for the images' double backward.
            grads = torch.autograd.grad((lam * per_sample).sum(), [theta[n] for n in self.param_names],
                                        create_graph=True)
            thetas = [theta[n].detach() for n in self.param_names]
            # the gradient's overall scale relative to the weights: round-off gradients (a bias in
            # front of a per-channel norm) then stay negligible in cos instead of pointing anywhere
            ref = (torch.stack([g.norm() for g in grads]).norm()
                   / torch.stack([t.norm() for t in thetas]).norm().clamp(min=1e-30))
            stat = torch.stack([self._dist(t, g, ref) / f
                                for t, g, f in zip(thetas, grads, self._scales())]).mean()
        else:
            stat = logits.new_zeros(())
        tv = (images[..., 1:, :] - images[..., :-1, :]).abs().mean() + \
             (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
        norm = images.pow(2).mean()
        cfg = self.config
        total = primal + cfg.resolved_alpha * stat + cfg.tv_weight * tv + cfg.norm_weight * norm
        if cfg.lambda_min > 0:
            total = total + 5.0 * (cfg.lambda_min - self.multipliers).clamp(min=0).pow(2).sum()
        return DKKTTerms(total, primal, stat, tv, norm, self.floor, float(correct.float().mean()))

    def backward_with(self, host_loss: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, *,
                      shared_graph: bool = False) -> tuple[DKKTTerms, BalanceStats]:
        """Backpropagate a host loss of ``images`` together with this term, weighed by ``config.balance``.

        Accumulates into ``images.grad`` ``∇ host_loss + s·∇ L_DKKT`` and into the multipliers'
        ``.grad`` ``∇ L_DKKT`` (as ``backward()`` of a sum would): with ``balance="grad"``
        ``s = balance_fraction·‖∇ host_loss‖ / ‖∇ L_DKKT‖`` (:class:`~dkkt_plugin.losses.balance.
        GradBalance`; norms over all images, no gradient through ``s``); with ``"fixed"`` ``s = 1``
        (weigh the host loss yourself: ``β·L_host``). It replaces ``host_loss.backward()`` in a
        host method's loop; the cost is that of one backward of the sum (module notes of
        :mod:`dkkt_plugin.losses.balance`).

        Args:
            host_loss: scalar loss of ``images`` from the host method (DM, gradient matching, ...).
            images: all N synthetic images, the leaf tensor the optimiser updates ``(N, C, H, W)``.
            labels: their labels ``(N,)``.
            shared_graph: the host loss and this term share part of their graph (e.g. one
                augmentation of the images feeds both).

        Returns:
            This term's parts and the :class:`~dkkt_plugin.losses.balance.BalanceStats` (``s``
            and the two image-gradient norms).

        Raises:
            ConfigError: ``images`` is not a leaf tensor that requires a gradient.
        """
        if not (images.is_leaf and images.requires_grad):
            raise ConfigError("DKKTLoss.backward_with needs the images' leaf tensor (the one the optimiser updates, "
                              "with requires_grad=True), not a slice or copy of it")
        terms = self.terms(images, labels)
        combine = self.balancer if self.balancer is not None else FixedScale(1.0)
        stats = combine.backward(host_loss, terms.total, images, list(self.parameters()), shared_graph=shared_graph)
        return terms, stats

    def uses_bf16(self, x: torch.Tensor) -> bool:
        """Whether the edge model's features of images like ``x`` are computed in bf16."""
        return self._splits and runtime.runs_bf16(x.to(self._dtype), self.speed.precision)

    def speed_report(self, x: torch.Tensor) -> dict[str, dict]:
        """What runs for images like ``x``: ``{"dkkt.features": ...}``
        (:func:`dkkt_plugin.runtime.describe_pass`)."""
        x = x.to(self._dtype)
        why = (cpu.not_supported_reasons(self.model, x, differentiated=self.param_names)
               if self.speed.backend == "cpu" else [])
        backend = "cpu" if self.speed.backend == "cpu" and not why else "torch"
        return {"dkkt.features": runtime.describe_pass(self.uses_bf16(x), backend, why)}

    # -- helpers -------------------------------------------------------------------------------
    def _embed_bf16(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The frozen blocks with the tensors ``params`` under bf16 autocast: (B, C, H, W) -> (B, D) bf16."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return functional_call(self._model[1], {"net." + n: t for n, t in params.items()}, (x,))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # state dicts written while the loss registered the model also hold its weights: ignored
        for key in [k for k in state_dict if k.startswith(prefix + "model.")]:
            del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _check(self, images, labels, indices) -> torch.Tensor:
        """Shapes and dtypes only (no host synchronisation); the label range is checked once the
        logits give the number of classes (:func:`_check_label_range`)."""
        check_input(self.model, images, "DKKTLoss")
        check_labels(labels, images, "labels")
        weight = next(self.model.parameters(), None)
        if weight is not None and weight.device != images.device:
            raise ConfigError(f"DKKTLoss got images on {images.device} but its model is on {weight.device} (.to() "
                              f"moves the multipliers only); move the model: model.to({str(images.device)!r})")
        lam = self.multipliers
        if indices is not None:
            return lam[indices]
        if images.shape[0] != self.num_images:
            raise ConfigError(
                f"DKKTLoss was built for {self.num_images} images but got {images.shape[0]}; "
                "pass indices=... for a minibatch, or build the loss with num_images=len(images)"
            )
        return lam

    def _dist(self, theta: torch.Tensor, grad_sum: torch.Tensor, ref=0.0) -> torch.Tensor:
        """D(θ*_k, -Σ λ g_k) for one tensor; ``ref``: ‖Σλg‖ / ‖θ*‖ over all selected tensors."""
        if self.config.distance == "cos":
            rows = theta.shape[0] if theta.ndim > 1 else 1
            a, b = theta.reshape(rows, -1), -grad_sum.reshape(rows, -1)  # (rows, fan_in)
            a_norm = a.norm(dim=-1)
            cos = (a * b).sum(-1) / (a_norm * (b.norm(dim=-1) + COS_DAMPING * ref * a_norm) + 1e-30)
            return (1 - cos).mean()
        r = theta + grad_sum
        return r.abs().mean() if self.config.distance == "l1" else r.pow(2).mean()

    def _scales(self) -> list[float]:
        # (a cos floor is exactly 1 per tensor, so scale="floor" leaves cos unchanged)
        return self._floors if self.config.scale == "floor" else [1.0] * len(self._floors)

    def _theta(self) -> list[torch.Tensor]:
        theta = dict(self.model.named_parameters())
        return [theta[n].detach() for n in self.param_names]

    def _row_weights(self) -> list[float]:
        # Squared-L2 version of this loss: mean_k ‖r_k‖² / (n_k · s_k) -> row weight 1/sqrt(n_k s_k).
        theta = self._theta()
        scales = self._scales()
        if self.config.distance == "l1" and self.config.scale == "floor":
            scales = [f * f for f in scales]  # L1 floor is mean|θ|; its squared-L2 analogue is its square
        return [1.0 / math.sqrt(t.numel() * s) for t, s in zip(theta, scales)]


def check_labels(labels: torch.Tensor, images: torch.Tensor, name: str) -> None:
    """ConfigError unless ``labels`` is an integer tensor with one entry per image."""
    if not torch.is_tensor(labels) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        what = f"{labels.dtype} {tuple(labels.shape)}" if torch.is_tensor(labels) else type(labels).__name__
        raise ConfigError(f"{name} must be integers (torch.long class indices), got {what}; e.g. labels.long()")
    if labels.shape != images.shape[:1]:
        raise ConfigError(f"{name} of shape {tuple(labels.shape)} do not match images {tuple(images.shape)}: "
                          f"give one label per image, shape ({images.shape[0]},)")


def _check_label_range(labels: torch.Tensor, num_classes: int) -> None:
    """ConfigError unless every label is in ``0 .. num_classes - 1`` (one host synchronisation,
    where the loss synchronises anyway for its accuracy)."""
    if labels.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(labels)).tolist()
    if lo < 0 or hi >= num_classes:
        raise ConfigError(f"labels {lo}..{hi} do not fit the model, which has {num_classes} classes "
                          f"(labels 0..{num_classes - 1}); give the labels of the model's classes")


class _Embed(nn.Module):
    """``net.embed`` as a forward, so :func:`torch.func.functional_call` runs it with other tensors."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every module of ``model`` is in eval mode; each module's own ``training``
    flag is restored on exit (a model partly in train mode comes back exactly as it was).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> net[0].eval()
        Linear(in_features=2, out_features=2, bias=True)
        >>> with eval_mode(net):
        ...     [m.training for m in net.modules()]
        [False, False, False]
        >>> [m.training for m in net.modules()]
        [True, False, True]
    """
    modes = [(m, m.training) for m in model.modules()]
    for m, _ in modes:
        m.training = False
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
