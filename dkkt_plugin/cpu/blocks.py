"""Which ConvNet blocks the fused kernels replace, and when: the CPU backend's one test.

Within :func:`fused`, every :class:`~dkkt_plugin.nets.ConvNet` inside a model (the model itself
or any submodule, ``embed`` not overridden) computes ``embed`` (and so ``forward``) with its
blocks fused, where they apply. Its ``features`` must be a sequence of blocks, each matched by
module type (:func:`find_blocks`): ``nn.Conv2d``, then ``nn.GroupNorm`` with one group per
channel and affine parameters (instance norm), then ``nn.ReLU``, then ``nn.AvgPool2d`` over 2x2
windows with stride 2. Block 1 then runs as :class:`~dkkt_plugin.cpu.kernels.FirstBlock` and each
later block's norm, ReLU and pooling, after torch's convolution, as
:class:`~dkkt_plugin.cpu.kernels.NormReluPool`; a block whose tensors do not fit (an odd size, a
dtype the kernels lack, a ReLU patched by ``soft_relu_backward``) runs torch's ops. The same
gradients up to float rounding.

:func:`not_supported_reasons` lists why the fused path does not apply to a model and an input
(empty: it applies): the one test, which :func:`fused` and :func:`embedding_plan` (the no-grad
bf16 embedding) apply.

Example:
    >>> from dkkt_plugin.nets import ConvNet
    >>> net = ConvNet(channels=1, num_classes=10, image_size=28, width=8)
    >>> x = torch.randn(2, 1, 28, 28, requires_grad=True)
    >>> with fused(net):
    ...     net(x).sum().backward()
    >>> x.grad.shape
    torch.Size([2, 1, 28, 28])
    >>> print(*not_supported_reasons(ConvNet(1, 10, 28, width=8, norm="batchnorm"), x))
    features.1 is BatchNorm2d where the fused blocks need an instance norm (GroupNorm with one group per
    channel and affine parameters)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Collection, Iterator, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from ..nets import ConvNet
from .build import library_error
from .kernels import _ARITH, _SUFFIX, EmbeddingPlan, FirstBlock, NormReluPool


@dataclass(frozen=True)
class Block:
    """One ConvNet block as matched in ``features`` (``index``: its convolution's position)."""

    index: int
    conv: nn.Conv2d
    norm: nn.GroupNorm
    relu: nn.ReLU
    pool: nn.AvgPool2d


_PATTERN = ((nn.Conv2d, "a Conv2d"),
            (nn.GroupNorm, "an instance norm (GroupNorm with one group per channel and affine parameters)"),
            (nn.ReLU, "a ReLU"),
            (nn.AvgPool2d, "a 2x2 average pooling with stride 2 (no padding)"))


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _matches(module: nn.Module, kind: type) -> bool:
    if not isinstance(module, kind):
        return False
    if kind is nn.GroupNorm:
        return module.num_groups == module.num_channels and module.affine
    if kind is nn.AvgPool2d:
        return (_pair(module.kernel_size) == (2, 2) and _pair(module.stride) == (2, 2)
                and _pair(module.padding) == (0, 0) and not module.ceil_mode and module.divisor_override is None)
    return True


def find_blocks(features: nn.Module) -> tuple[list[Block], list[str]]:
    """``features``' modules grouped into conv -> instance norm -> ReLU -> 2x2 average pooling
    blocks by module type, and what does not match (empty when every module belongs to a block).

    Example:
        >>> blocks, problems = find_blocks(ConvNet(1, 10, 28, width=4).features)
        >>> [b.index for b in blocks], problems
        ([0, 4, 8], [])
    """
    if not isinstance(features, nn.Sequential):
        return [], [f"features is {type(features).__name__}, not an nn.Sequential of blocks"]
    modules = list(features.named_children())
    blocks: list[Block] = []
    i = 0
    while i < len(modules):
        start, found = i, []
        for kind, what in _PATTERN:
            if i >= len(modules):
                return [], [f"features ends after features.{modules[-1][0]} where the fused blocks need {what}"]
            name, module = modules[i]
            if not _matches(module, kind):
                return [], [f"features.{name} is {type(module).__name__} where the fused blocks need {what}"]
            found.append(module)
            i += 1
        blocks.append(Block(start, *found))
    if not blocks:
        return [], ["features holds no block"]
    return blocks, []


def _conv_fits(conv: nn.Conv2d) -> bool:
    """A 3x3 convolution with stride 1, square zero padding and a bias (the C kernels' block 1)."""
    pad = conv.padding
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and isinstance(pad, tuple) and pad[0] == pad[1] and conv.padding_mode == "zeros"
            and conv.bias is not None)


def _convnet_reasons(net: ConvNet, prefix: str, differentiated: Collection[str]) -> list[str]:
    """Why the ConvNet ``net`` (at ``prefix`` in its model) cannot run fused, from its structure."""
    where = f"{prefix}: " if prefix else ""
    if type(net).embed is not ConvNet.embed:
        return [f"{where}{type(net).__name__}.embed replaces ConvNet.embed"]
    _, problems = find_blocks(net.features)
    inside = f"{prefix}.features." if prefix else "features."
    if any(name.startswith(inside) for name in differentiated):
        problems = [*problems, f"parameters of {inside.rstrip('.')} are differentiated twice (the caller's "
                               "create_graph=True backward), which the kernels leave to torch's ops"]
    return [where + p for p in problems]


def _input_reasons(x: torch.Tensor) -> list[str]:
    """Why the fused path cannot run on the input ``x`` now (device, tensor type, tracing)."""
    reasons = []
    if x.device.type != "cpu":
        reasons.append(f"the input is on {x.device}, not on the CPU")
    if type(x) not in (torch.Tensor, nn.Parameter):
        reasons.append(f"the input is a tensor subclass ({type(x).__name__})")
    elif x.dtype not in _SUFFIX:
        reasons.append(f"the input is {x.dtype}; the kernels take float32, float64 or bfloat16")
    if torch.compiler.is_compiling():
        reasons.append("torch.compile is tracing")
    if torch._C._are_functorch_transforms_active():
        reasons.append("a torch.func transform (vmap, grad) is active")
    mode = _get_current_dispatch_mode()
    if mode is not None:
        reasons.append(f"a dispatch mode is active ({type(mode).__name__})")
    return reasons


def not_supported_reasons(model: nn.Module, x: torch.Tensor, *, differentiated: Collection[str] = (),
                          bf16_embedding: bool = False) -> list[str]:
    """Why the fused blocks do not run ``model`` on ``x`` here; empty when they do.

    Args:
        model: a :class:`~dkkt_plugin.nets.ConvNet`, or a model holding ConvNets (each is checked).
        x: the input ``(B, C, H, W)``.
        differentiated: names (as in ``model.named_parameters()``) of the parameters whose
            gradient the caller differentiates again (``create_graph=True``); a ConvNet whose
            blocks hold one keeps torch's ops.
        bf16_embedding: the no-grad bf16 embedding of ``model`` itself (:func:`embedding_plan`)
            instead of the blocks with a backward.

    The kernels are built on the first call that gets that far; if that fails, a warning says
    so once and the reason is listed from then on.
    """
    if bf16_embedding:
        convnets = [("", model)] if isinstance(model, ConvNet) else []
    else:
        convnets = [(name, m) for name, m in model.named_modules() if isinstance(m, ConvNet)]
    if not convnets:
        return [f"{type(model).__name__} is not a dkkt_plugin.nets.ConvNet"
                + ("" if bf16_embedding else " and holds none")]
    reasons = [r for name, net in convnets for r in _convnet_reasons(net, name, differentiated)]
    reasons += _input_reasons(x)
    if bf16_embedding:
        if torch.is_grad_enabled():
            reasons.append("gradients are recorded (the bf16 embedding has no backward)")
        if x.dtype != torch.float32 or x.dim() != 4:
            reasons.append(f"the input is {x.dtype} of shape {tuple(x.shape)}, not float32 (B, C, H, W)")
        if {(p.dtype, p.device.type) for p in model.parameters()} != {(torch.float32, "cpu")}:
            reasons.append("the network's parameters are not all float32 on the CPU")
        blocks, _ = find_blocks(model.features)
        if blocks and not all(_conv_fits(b.conv) for b in blocks):
            reasons.append("a convolution is not 3x3 with stride 1, square zero padding and a bias")
    if not reasons:
        error = library_error()
        if error:
            reasons.append(error)
    return reasons


@contextlib.contextmanager
def fused(model: nn.Module, *, differentiated: Collection[str] = (), enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every ConvNet in ``model`` whose structure fits computes ``embed`` (and
    so ``forward``) with its blocks fused, on each input where :func:`not_supported_reasons`
    allows it, and with its own ops elsewhere; on exit the model is as it was. (Each such ConvNet
    gets an instance attribute ``embed`` for the block: copy a model outside the block.)

    Args:
        model: the model (a ConvNet or a model holding ConvNets).
        differentiated: parameter names whose gradient is differentiated again (see
            :func:`not_supported_reasons`); their ConvNets keep torch's ops.
        enabled: ``False`` changes nothing.
    """
    patched = []
    if enabled:
        for name, net in model.named_modules():
            fits = isinstance(net, ConvNet) and not _convnet_reasons(net, name, differentiated)
            if fits and "embed" not in vars(net):  # (already patched by an enclosing block: left to it)
                net.embed = _fused_embed(net, find_blocks(net.features)[0])  # an instance attribute, removed on exit
                patched.append(net)
    try:
        yield model
    finally:
        for net in patched:
            del net.embed


def _fused_embed(net: ConvNet, blocks: list[Block]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``net.embed`` through the fused blocks where the input allows, ``ConvNet.embed`` elsewhere."""

    def embed(x: torch.Tensor) -> torch.Tensor:
        if _input_reasons(x) or library_error():
            return ConvNet.embed(net, x)
        return _features(net, blocks, x).flatten(1)  # (B, feature_dim)

    return embed


def embedding_plan(net: nn.Module, x: torch.Tensor) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The no-grad bf16 embedding of the ConvNet ``net``'s current weights (a function of chunks
    like ``x``: (B, C, H, W) fp32 -> (B, feature_dim) fp32), or None where it does not apply."""
    if not_supported_reasons(net, x, bf16_embedding=True):
        return None
    return EmbeddingPlan(find_blocks(net.features)[0])


def _features(model: ConvNet, blocks: list[Block], x: torch.Tensor) -> torch.Tensor:
    """``model.features(x)`` block by block: block 1 as FirstBlock and every later block's norm,
    ReLU and pooling as NormReluPool where the tensors fit, torch's ops where they do not."""
    h = x
    for k, block in enumerate(blocks):
        conv, norm, relu, pool = block.conv, block.norm, block.relu, block.pool
        first_fp32 = k == 0 and model.first_conv_fp32(x)  # as ConvNet.embed: fp32 under autocast
        if first_fp32:
            h = h.float()
        if k == 0 and _first_block_fits(conv, norm, relu, h):
            # under autocast, bf16 output: what the next convolution would cast it to
            out_dtype = torch.bfloat16 if first_fp32 and torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
            h = FirstBlock.apply(h, conv.weight, conv.bias, norm.weight, norm.bias, conv.padding[0], norm.eps,
                                 out_dtype)
            continue  # (B, C, H/2, W/2)
        with torch.autocast("cpu", enabled=False) if first_fp32 else contextlib.nullcontext():
            h = conv(h)  # (B, C, H, W)
        if _norm_fits(norm, relu, h):
            h = NormReluPool.apply(h, norm.weight, norm.bias, norm.eps)  # (B, C, H/2, W/2)
        else:
            h = pool(relu(norm(h)))
    return h


def _norm_fits(norm: nn.GroupNorm, relu: nn.Module, h: torch.Tensor) -> bool:
    """Whether :class:`NormReluPool` computes this block's norm, ReLU and pooling for ``h``."""
    return (h.dtype in _SUFFIX and h.shape[-2] % 2 == 0 and h.shape[-1] % 2 == 0 and "forward" not in vars(relu)
            and norm.weight is not None and norm.weight.dtype == norm.bias.dtype == _ARITH[h.dtype])


def _first_block_fits(conv: nn.Conv2d, norm: nn.GroupNorm, relu: nn.Module, x: torch.Tensor) -> bool:
    """Whether :class:`FirstBlock` computes this block for ``x``."""
    pad = conv.padding
    return (x.dtype in (torch.float32, torch.float64) and _conv_fits(conv) and "forward" not in vars(relu)
            and (x.shape[-2] + 2 * pad[0]) % 2 == 0 and (x.shape[-1] + 2 * pad[1]) % 2 == 0
            and all(t is not None and t.dtype == x.dtype for t in (conv.weight, conv.bias, norm.weight, norm.bias))
            and (not torch.is_autocast_enabled("cpu") or torch.is_grad_enabled()))  # embed(): fp32 then
