"""Weighing the DKKT term against any host loss by their image gradients.

A host method (DM, gradient matching, anything that makes a scalar loss ``L_h`` of the synthetic
images ``x``) gains the DKKT term ``L_d`` of the same images. A fixed weight does not carry over
from one host loss to another: at weight 1 the DKKT term's image gradient is a few thousandths of
gradient matching's or DM's, so the images barely move. :class:`GradBalance` sets the weight from
the two gradients instead. With ``g_h = ∇x L_h`` and ``g_d = ∇x L_d`` (each over all images)
the images receive

    g = g_h + s·g_d,     s = fraction · ‖g_h‖ / ‖g_d‖

so ``‖s·g_d‖ = fraction·‖g_h‖`` whatever the two losses' scales. ``s`` is a plain number
(detached): no gradient flows through the scale. ``mode="step"`` uses this step's two norms;
``mode="running"`` their exponential moving averages (momentum ``μ``: ``m ← μ·m + (1-μ)·‖g‖``,
the first step sets ``m`` to its norm), which smooths ``s`` over steps. When ``‖g_d‖`` (or its
average) is 0, ``s = 0``. With ``fraction = 0`` the images receive exactly ``g_h``: the host
method unchanged. Parameters of the DKKT term (its multipliers) receive ``∇ L_d`` unscaled by
default, the gradient they get under fixed weights (``L_d + β·L_h``): their own optimiser's
learning rate sets their step, whatever the host loss's scale (``scale_params=True`` scales it
by ``s`` too).

Cost: ``g_h`` and ``g_d`` come from two ``torch.autograd.grad`` calls, one over each loss's
graph. When the two losses share no part of their graph (the images are their only common
input, as in DM+DKKT and gradient matching+DKKT) that is the work of one backward of their sum:
no extra backward (measured: no more FLOPs than ``(L_h + L_d).backward()``; fewer where the
sum's backward also reaches parameters that need no gradient, docs/method.md, 'Adding the term
to another method'). Where the losses share a part (say, one augmentation of the images feeds
both), pass ``shared_graph=True`` and that part's backward runs twice. On top come two gradient
norms and one host synchronisation per step.

:class:`FixedScale` has the same interface with a constant ``s`` (the fixed weights).

Example:
    >>> x = torch.ones(2, 3, requires_grad=True)
    >>> host, dkkt = (3 * x).sum(), (x ** 2).sum() / 100        # ∇host = 3, ∇dkkt = 0.02
    >>> stats = GradBalance(0.5).backward(host, dkkt, x)
    >>> round(stats.scale, 6), x.grad[0].tolist()               # s = 0.5 · 3 / 0.02
    (75.0, [4.5, 4.5, 4.5])
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..errors import ConfigError, NonFiniteLossError
from ..settings import BALANCE_MODES, DEFAULT_BALANCE_FRACTION, DKKTConfig

Tensors = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass(frozen=True)
class BalanceStats:
    """One combination: the scale applied to the DKKT term and this step's two image-gradient norms."""

    scale: float  # s (a plain float: nothing flows back through it)
    host_norm: float  # ‖∇x L_h‖ of this step
    dkkt_norm: float  # ‖∇x L_d‖ of this step

    @property
    def ratio(self) -> float:
        """``‖s·g_d‖ / ‖g_h‖`` as applied (the fraction under the step rule; NaN when ‖g_h‖ is 0)."""
        return self.scale * self.dkkt_norm / self.host_norm if self.host_norm > 0 else float("nan")


class _Combine(nn.Module):
    """``g_h + s·g_d`` accumulated into ``.grad``; subclasses choose ``s`` in :meth:`scale`."""

    scale_params: bool = False

    def scale(self, host_norm: float, dkkt_norm: float) -> float:
        raise NotImplementedError

    def backward(self, host_loss: torch.Tensor, dkkt_loss: torch.Tensor, inputs: Tensors,
                 params: Sequence[torch.Tensor] = (), *, shared_graph: bool = False) -> BalanceStats:
        """Accumulate ``∇ L_h + s·∇ L_d`` into the ``.grad`` of ``inputs`` (the images) and the DKKT
        term's gradient into that of ``params`` (e.g. ``DKKTLoss.parameters()``), as ``backward()``
        of a sum would; returns the scale and the norms.

        Args:
            host_loss: scalar host loss ``L_h`` of ``inputs``.
            dkkt_loss: scalar DKKT loss ``L_d`` of ``inputs`` (and of ``params``).
            inputs: the synthetic images (one tensor or several; norms are over all of them).
            params: further leaves of ``L_d`` only (the multipliers).
            shared_graph: the two losses share part of their graph (keep it for the second pass).

        Raises:
            NonFiniteLossError: a gradient norm is NaN or inf (nothing is accumulated).
            ConfigError: the two losses share part of their graph and ``shared_graph`` is False;
                ``inputs`` or ``params`` are not leaf tensors.
        """
        inputs = [inputs] if torch.is_tensor(inputs) else list(inputs)
        params = list(params)
        host = _grad(host_loss, inputs, retain_graph=shared_graph)
        try:
            dkkt = _grad(dkkt_loss, inputs + params)
        except RuntimeError as exc:
            if "second time" not in str(exc):
                raise
            raise ConfigError(f"{type(self).__name__}.backward: the host loss and the DKKT term share part of "
                              "their graph; pass shared_graph=True") from None
        return self.apply(inputs, host, dkkt[:len(inputs)], params, dkkt[len(inputs):])

    def apply(self, inputs: Sequence[torch.Tensor], host_grads: Sequence[Optional[torch.Tensor]],
              dkkt_grads: Sequence[Optional[torch.Tensor]], params: Sequence[torch.Tensor] = (),
              param_grads: Sequence[Optional[torch.Tensor]] = ()) -> BalanceStats:
        """:meth:`backward` from gradients computed beforehand (e.g. the DKKT term's first, its
        graph freed, before the host loss builds its own); ``None`` stands for a zero gradient."""
        if not all(x.is_leaf for x in [*inputs, *params]):
            raise ConfigError(f"{type(self).__name__} accumulates into .grad: pass the leaf tensors the optimisers "
                              "update (the images themselves, not a slice or copy of them)")
        host_norm, dkkt_norm = _norms(host_grads, dkkt_grads)
        if not (math.isfinite(host_norm) and math.isfinite(dkkt_norm)):
            raise NonFiniteLossError(f"an image gradient is not finite (host loss: norm {host_norm}, DKKT term: "
                                     f"norm {dkkt_norm}); nothing was accumulated, so the images keep their "
                                     "last good state")
        s = self.scale(host_norm, dkkt_norm)
        for x, gh, gd in zip(inputs, host_grads, dkkt_grads):
            if gh is None:
                gh = torch.zeros_like(x)
            _accumulate(x, gh if gd is None or s == 0 else torch.add(gh, gd, alpha=s))
        for p, gp in zip(params, param_grads):
            if gp is not None:
                _accumulate(p, gp * s if self.scale_params else gp)
        return BalanceStats(s, host_norm, dkkt_norm)


class GradBalance(_Combine):
    """The DKKT term's image gradient scaled to ``fraction`` times the host loss's (module notes).

    Args:
        fraction: ``‖s·g_d‖ / ‖g_h‖`` to aim for; 0 gives the host's gradient exactly.
        mode: ``"step"`` (this step's norms) or ``"running"`` (their moving averages).
        momentum: the moving averages' momentum with ``mode="running"``, in [0, 1).
        scale_params: scale the DKKT term's parameters' gradient by ``s`` too (default: unscaled).

    The running averages are buffers (``state_dict()`` holds ``host_norm``, ``dkkt_norm`` and
    ``steps``), so a run that saves and loads them resumes exactly.

    Raises:
        ConfigError: a negative or non-finite fraction, an unknown mode, a momentum outside [0, 1).
    """

    def __init__(self, fraction: float = DEFAULT_BALANCE_FRACTION, mode: str = "step", momentum: float = 0.9,
                 *, scale_params: bool = False) -> None:
        super().__init__()
        if not (isinstance(fraction, (int, float)) and 0 <= fraction < math.inf):
            raise ConfigError(f"GradBalance fraction must be a finite number >= 0, got {fraction!r} (e.g. 0.1)")
        if mode not in BALANCE_MODES:
            raise ConfigError(f"GradBalance mode={mode!r}; choose one of {BALANCE_MODES}")
        if not 0 <= momentum < 1:
            raise ConfigError(f"GradBalance momentum must be in [0, 1), got {momentum}")
        self.fraction, self.mode, self.momentum = float(fraction), mode, float(momentum)
        self.scale_params = scale_params
        self.register_buffer("host_norm", torch.zeros((), dtype=torch.float64))  # running ‖g_h‖
        self.register_buffer("dkkt_norm", torch.zeros((), dtype=torch.float64))  # running ‖g_d‖
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # steps averaged so far

    @classmethod
    def from_config(cls, config: DKKTConfig) -> "GradBalance":
        """The rule of ``config.balance_*`` (``DKKTConfig``)."""
        return cls(config.balance_fraction, config.balance_mode, config.balance_momentum)

    def scale(self, host_norm: float, dkkt_norm: float) -> float:
        """``s`` for a step with these norms (updating the running averages in ``"running"`` mode)."""
        if self.mode == "running":
            if int(self.steps) == 0:
                self.host_norm.fill_(host_norm)
                self.dkkt_norm.fill_(dkkt_norm)
            else:
                mu = self.momentum
                self.host_norm.mul_(mu).add_((1 - mu) * host_norm)
                self.dkkt_norm.mul_(mu).add_((1 - mu) * dkkt_norm)
            self.steps += 1
            host_norm, dkkt_norm = float(self.host_norm), float(self.dkkt_norm)
        if self.fraction == 0 or dkkt_norm == 0:
            return 0.0
        return self.fraction * host_norm / dkkt_norm

    def extra_repr(self) -> str:
        return f"fraction={self.fraction}, mode={self.mode!r}, momentum={self.momentum}"


class FixedScale(_Combine):
    """A constant ``s = weight``: ``g_h + weight·g_d`` (the DKKT term's parameters get ``∇ L_d``)."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    def scale(self, host_norm: float, dkkt_norm: float) -> float:
        return self.weight


def _grad(loss: torch.Tensor, leaves: list[torch.Tensor], retain_graph: bool = False) -> list[Optional[torch.Tensor]]:
    if not loss.requires_grad:  # a loss that does not depend on any leaf (e.g. a constant)
        return [None] * len(leaves)
    return list(torch.autograd.grad(loss, leaves, retain_graph=retain_graph, allow_unused=True))


def _norms(host: Sequence[Optional[torch.Tensor]], dkkt: Sequence[Optional[torch.Tensor]]) -> tuple[float, float]:
    """‖host‖ and ‖dkkt‖ over all their tensors, in float64, with one host synchronisation."""
    def norm(grads):
        parts = [torch.linalg.vector_norm(g.detach()).double() for g in grads if g is not None]
        return torch.linalg.vector_norm(torch.stack(parts)) if parts else None

    values = [norm(host), norm(dkkt)]
    known = [v for v in values if v is not None]
    out = torch.stack([v.to(known[0].device) for v in known]).tolist() if known else []
    return tuple(out.pop(0) if v is not None else 0.0 for v in values)


def _accumulate(leaf: torch.Tensor, grad: torch.Tensor) -> None:
    """``leaf.grad += grad`` as autograd accumulates (a fresh ``.grad`` when there is none)."""
    if leaf.grad is None:
        leaf.grad = grad.detach()
    else:
        leaf.grad += grad.detach()
