"""KKT helpers shared by the DKKT loss and the support-vector analysis.

- which parameters enter the stationarity condition,
- per-sample gradients (``torch.func``, chunked) for fitting multipliers,
- the non-negative least-squares fit of ``θ* ≈ -Σ λ_i g_i``,
- the classification margin of a sample (support vectors have a small one),
- a ReLU whose backward is soft (Haim et al. 2022), so a double backward reaches the images.

Example:
    >>> from dkkt_plugin.nets import ConvNet
    >>> net = ConvNet(channels=1, num_classes=3, image_size=8, width=4, depth=1)
    >>> select_parameters(net, "weights")
    ['features.0.weight', 'classifier.weight']
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls
from torch import nn
from torch.func import functional_call, grad, vmap

from ..errors import ConfigError

SELECTIONS = ("all", "weights", "classifier")


def select_parameters(model: nn.Module, params: str | Sequence[str] = "weights",
                      param_filter: Optional[Callable[[str, torch.Tensor], bool]] = None) -> list[str]:
    """Names of the parameter tensors of ``model`` that enter the stationarity condition.

    ``all``: every parameter. ``weights``: tensors with ndim >= 2 (conv and linear weights). This
    leaves out norm scales and shifts, whose θ* (≈ 1) dominates a distance but which the method
    cannot match, and conv biases in front of a per-channel norm, whose gradient is identically 0.
    ``classifier``: the parameters of the final linear layer of any architecture
    (:func:`dkkt_plugin.models.final_linear`: the last ``nn.Linear`` whose outputs are the
    model's classes where the model states them in ``config["num_classes"]`` or ``num_classes``,
    else the last ``nn.Linear``). Any other string, or a tuple of strings, is read as
    parameter-name prefixes: ``"fc."`` selects ``fc.weight`` and ``fc.bias``, ``("layer4.",
    "fc.")`` both.

    Example:
        >>> select_parameters(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), "classifier")
        ['2.weight', '2.bias']
        >>> select_parameters(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), ("0.",))
        ['0.weight', '0.bias']
    """
    from ..models import final_linear

    named = list(model.named_parameters())
    if param_filter is not None:
        chosen = [n for n, p in named if param_filter(n, p)]
    elif params == "all":
        chosen = [n for n, _ in named]
    elif params == "weights":
        chosen = [n for n, p in named if p.ndim >= 2]
    elif params == "classifier":
        name, _ = final_linear(model)
        prefix = name + "." if name else ""
        chosen = [n for n, _ in named if n.startswith(prefix) and "." not in n[len(prefix):]]
    elif isinstance(params, str) or (isinstance(params, (tuple, list)) and params
                                     and all(isinstance(p, str) and p for p in params)):
        prefixes = (params,) if isinstance(params, str) else tuple(params)
        chosen = [n for n, _ in named if n.startswith(prefixes)]
    else:
        raise ConfigError(f"unknown parameter selection {params!r}; choose one of {SELECTIONS} or give "
                          "parameter-name prefixes such as 'fc.'")
    if not chosen:
        tops = sorted({n.split(".")[0] + "." for n, _ in named})
        raise ConfigError(f"parameter selection {params!r} matched no parameter of {type(model).__name__} (its "
                          f"parameter names start with {', '.join(tops[:12]) or 'nothing'}); choose one of "
                          f"{SELECTIONS} or prefixes of those names")
    return chosen


def per_sample_grads(model: nn.Module, names: Sequence[str], x: torch.Tensor, y: torch.Tensor,
                     chunk_size: int = 64, loss: str = "ce") -> list[torch.Tensor]:
    """Per-sample gradients w.r.t. the named parameters of the cross-entropy (``loss="ce"``) or
    of the negative margin ``-(f_y - max_{k≠y} f_k)`` (``loss="margin"``).

    Returns one tensor per name, shape ``(N, *param.shape)``. Needs a model whose outputs are
    per-sample (eval-mode BN or instance norm), which holds for the frozen edge model.
    """
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    wanted = {n: params[n] for n in names}
    rest = {n: p for n, p in params.items() if n not in wanted}

    def loss_one(w: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**rest, **w, **buffers}, (xi.unsqueeze(0),))  # (1, K)
        if loss == "margin":
            return -margin_logits(out, yi.unsqueeze(0))[0]
        return F.cross_entropy(out, yi.unsqueeze(0))

    g = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk_size)(wanted, x, y)
    return [g[n] for n in names]


def fit_multipliers_nnls(theta: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                         row_weights: Optional[Sequence[float]] = None,
                         ridge: float = 1e-10) -> tuple[torch.Tensor, float]:
    """Solve ``min_{λ ≥ 0} Σ_k w_k² ‖θ*_k + Σ_i λ_i g_ik‖²`` by NNLS.

    Works on the N x N Gram matrix (Cholesky factor) rather than the (P x N) system, so the cost
    does not grow with the number of parameters P beyond one matrix product.

    Args:
        theta: the parameter tensors θ*_k.
        grads: per-sample gradients, each ``(N, *θ_k.shape)``.
        row_weights: ``w_k`` per tensor (1 if omitted).
        ridge: relative diagonal loading that keeps the Gram matrix positive definite.

    Returns:
        ``(λ, relative residual)``: λ of shape (N,) on θ's device, and
        ``‖θ* + Σ λ_i g_i‖_w / ‖θ*‖_w``.
    """
    w = list(row_weights) if row_weights is not None else [1.0] * len(theta)
    n = grads[0].shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64)
    rhs = torch.zeros(n, dtype=torch.float64)
    tt = 0.0
    for t, g, wk in zip(theta, grads, w):
        a = g.reshape(n, -1).double().cpu() * wk  # (N, P_k)
        b = -t.reshape(-1).double().cpu() * wk  # (P_k,)
        gram += a @ a.T
        rhs += a @ b
        tt += float(b @ b)
    gram += ridge * gram.diagonal().mean().clamp(min=1e-30) * torch.eye(n, dtype=torch.float64)
    chol = torch.linalg.cholesky(gram)  # gram = L Lᵀ; ‖Aλ - b‖² = ‖Lᵀλ - L⁻¹Aᵀb‖² + const
    target = torch.linalg.solve_triangular(chol, rhs[:, None], upper=False)[:, 0]
    lam, _ = nnls(chol.T.numpy(), target.numpy(), maxiter=50 * n)
    lam_t = torch.from_numpy(np.asarray(lam))
    resid2 = max(tt - 2 * float(lam_t @ rhs) + float(lam_t @ gram @ lam_t), 0.0)
    rel = (resid2 / tt) ** 0.5 if tt > 0 else 0.0
    return lam_t.to(device=theta[0].device, dtype=theta[0].dtype), rel


@torch.no_grad()
def margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit margin ``f_y(x) - max_{k≠y} f_k(x)`` per sample, shape (N,); small = near the boundary."""
    return margin_logits(model(x), y)  # (N,)


def margin_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Differentiable ``f_y - max_{k≠y} f_k`` of ``logits`` ``(N, K)``, shape ``(N,)``."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


class _SoftReLU(torch.autograd.Function):
    """ReLU forward; backward multiplies by ``sigmoid(a z)`` instead of the step ``[z > 0]``.

    The backward is written in differentiable torch ops, so a double backward (the images'
    gradient of the stationarity term) sees ``a · sigmoid'(a z)`` instead of zero almost everywhere.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, slope: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.slope = slope
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (z,) = ctx.saved_tensors
        return grad * torch.sigmoid(ctx.slope * z), None


def soft_relu(z: torch.Tensor, slope: float) -> torch.Tensor:
    """``relu(z)`` whose derivative is ``sigmoid(slope * z)``.

    Example:
        >>> z = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
        >>> y = soft_relu(z, 4.0); y.sum().backward()
        >>> y.tolist(), [round(g, 3) for g in z.grad.tolist()]
        ([0.0, 0.0, 2.0], [0.018, 0.5, 1.0])
    """
    return _SoftReLU.apply(z, slope)


@contextlib.contextmanager
def soft_relu_backward(model: nn.Module, slope: float) -> Iterator[nn.Module]:
    """Within the block, every ``nn.ReLU`` of ``model`` computes :func:`soft_relu` (same forward,
    soft derivative); ``slope <= 0`` changes nothing. The modules are restored on exit."""
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)] if slope > 0 else []
    for m in relus:
        m.forward = lambda z, _s=slope: soft_relu(z, _s)  # instance attribute shadows the class's
    try:
        yield model
    finally:
        for m in relus:
            del m.forward
