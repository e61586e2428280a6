"""The DatasetCondensation ConvNet, with initialisation driven by an explicit generator.

Each block is Conv3x3 -> norm -> ReLU -> pool. ``instancenorm`` is ``GroupNorm(C, C)`` as in the
reference code: it normalises each sample on its own, so a batch of many classes gives exactly the
per-class results (the DM loss relies on this). One-channel 28x28 inputs are padded by 3 in the
first convolution, so 28 px and 32 px inputs both give 4x4 features at depth 3.

Example:
    >>> net = ConvNet(channels=1, num_classes=10, image_size=28, generator=torch.Generator().manual_seed(0))
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> net.embed(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 2048])
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .errors import ConfigError

NORMS = ("instancenorm", "batchnorm", "none")
POOLINGS = ("avg", "max", "none")


class ConvNet(nn.Module):
    """DatasetCondensation's ConvNet (width 128, depth 3, instance norm, average pooling by default).

    Args:
        channels: input channels (1 or 3).
        num_classes: output classes.
        image_size: input side in pixels (square), e.g. 28 or 32.
        width: channels of every conv layer.
        depth: number of conv blocks.
        norm: ``instancenorm`` (per-sample GroupNorm(C, C)), ``batchnorm`` or ``none``.
        pooling: ``avg``, ``max`` or ``none``.
        generator: draws the initial weights; ``None`` uses a generator seeded with 0.
        device: where to create the parameters.

    Shape:
        - Input: ``(B, channels, image_size, image_size)``
        - Output: ``(B, num_classes)``; ``embed`` gives ``(B, feature_dim)``.
    """

    def __init__(
        self,
        channels: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        *,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
        pooling: str = "avg",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if channels < 1 or num_classes < 2 or depth < 1 or width < 1:
            raise ConfigError(
                f"ConvNet needs channels >= 1, num_classes >= 2, depth >= 1, width >= 1; "
                f"got channels={channels}, num_classes={num_classes}, depth={depth}, width={width}"
            )
        self.config: dict[str, Any] = dict(
            channels=channels, num_classes=num_classes, image_size=image_size,
            width=width, depth=depth, norm=norm, pooling=pooling,
        )
        # Built on the meta device so construction draws nothing from torch's global RNG;
        # reset_parameters() then fills the weights from an explicit generator.
        layers: list[nn.Module] = []
        side, c_in = image_size, channels
        for d in range(depth):
            pad = 3 if channels == 1 and d == 0 else 1
            layers.append(nn.Conv2d(c_in, width, kernel_size=3, padding=pad, device="meta"))
            side = side + 2 * pad - 2
            if norm == "instancenorm":
                layers.append(nn.GroupNorm(width, width, affine=True, device="meta"))
            elif norm == "batchnorm":
                layers.append(nn.BatchNorm2d(width, device="meta"))
            layers.append(nn.ReLU(inplace=True))
            if pooling != "none":
                layers.append(AvgPool2x2() if pooling == "avg" else nn.MaxPool2d(2))
                side //= 2
            c_in = width
        if side < 1:
            raise ConfigError(f"image_size {image_size} is too small for depth {depth} with pooling")
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * side * side
        self.classifier = nn.Linear(self.feature_dim, num_classes, device="meta")
        self.to_empty(device=device or "cpu")
        self.reset_parameters(generator)

    @property
    def per_sample(self) -> bool:
        """True when every sample's output is independent of the rest of the batch."""
        return self.config["norm"] != "batchnorm" or not self.training

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> "ConvNet":
        """Re-draw every weight as PyTorch's default init does, from ``generator`` (seeded with 0
        if omitted): see :func:`init_weights`."""
        return init_weights(self, generator)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the classifier: (B, C, H, W) -> (B, feature_dim).

        Under bf16/fp16 autocast with gradients recorded, the first convolution (1 or 3 input
        channels, ~2.5 % of the FLOPs) runs in fp32: oneDNN's bf16 weight gradient for so few
        input channels ran 2.4x slower than fp32 on a Zen 5 CPU. Elsewhere autocast applies.
        """
        if self.first_conv_fp32(x):
            with torch.autocast(x.device.type, enabled=False):
                h = self.features[0](x.float())  # (B, width, H', W') fp32
            return self.features[1:](h).flatten(1)
        return self.features(x).flatten(1)

    def first_conv_fp32(self, x: torch.Tensor) -> bool:
        """Whether :meth:`embed` runs the first convolution outside autocast for ``x``."""
        return (torch.is_grad_enabled() and torch.is_autocast_enabled(x.device.type)
                and self.features[0].in_channels <= 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))  # (B, num_classes)


class _AvgPool2x2Fn(torch.autograd.Function):
    """2x2 mean with stride 2 over the last two (even) dims, by two contiguous adds.

    The same sums as ``F.avg_pool2d(x, 2)`` up to float rounding; on the CPU its forward and
    backward run several times faster on NCHW tensors (the native kernel walks each window).
    The backward spreads ``g / 4`` over each window with differentiable ops, so double backward
    (the DKKT term) and ``torch.func.vmap`` (per-sample gradients) work through it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # (..., H, W) -> (..., H/2, W/2)
        h, w = x.shape[-2:]
        rows = x.reshape(*x.shape[:-2], h // 2, 2 * w)  # (..., H/2, 2W): row pairs side by side
        pair = rows[..., :w] + rows[..., w:]  # (..., H/2, W)
        return (pair[..., 0::2] + pair[..., 1::2]) * 0.25  # (..., H/2, W/2)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # (..., h, w) -> (..., 2h, 2w)
        h, w = grad.shape[-2:]
        lead = grad.shape[:-2]
        # each column twice (times 1/4) by a (w, 2w) matmul, then each row twice by a copy whose
        # inner dimension is a whole row: both vectorise, unlike an expand over 2x2 windows
        spread = torch.eye(w, dtype=grad.dtype, device=grad.device).repeat_interleave(2, dim=1) * 0.25
        cols = grad @ spread  # (..., h, 2w)
        return cols.unsqueeze(-2).expand(*lead, h, 2, 2 * w).reshape(*lead, 2 * h, 2 * w)


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2)`` with a faster CPU path for contiguous inputs of even height and width.

    Other inputs (odd sizes, channels_last, CUDA, where the native kernel is already fast) go
    through ``nn.AvgPool2d``. Same results up to float rounding (the sum order differs).

    Shape:
        - Input: ``(B, C, H, W)``; Output: ``(B, C, H // 2, W // 2)``.
    """

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (x.device.type == "cpu" and x.dim() == 4 and h % 2 == 0 and w % 2 == 0 and x.is_contiguous()
                and not torch.compiler.is_compiling()):
            return _AvgPool2x2Fn.apply(x)
        return super().forward(x)


@torch.no_grad()
def init_weights(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """PyTorch's default initialisation drawn from ``generator``: conv and linear weights and
    biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform with a = sqrt(5)), norm scales 1,
    shifts 0, batch-norm statistics reset. Modules are visited in ``model.modules()`` order."""
    if generator is None:
        p = next(model.parameters(), None)
        generator = torch.Generator(device=p.device if p is not None else "cpu").manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            bound = 1.0 / math.sqrt(m.weight[0].numel())  # fan_in
            _uniform_(m.weight, bound, generator)
            if m.bias is not None:
                _uniform_(m.bias, bound, generator)
        elif isinstance(m, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
    return model


def _uniform_(t: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    # drawn on the generator's device, then copied: a CPU generator also initialises CUDA models
    t.copy_(torch.empty(t.shape, device=generator.device).uniform_(-bound, bound, generator=generator))


def check_input(model: nn.Module, images: torch.Tensor, who: str) -> None:
    """ConfigError naming the shapes when ``images`` cannot go through ``model``.

    Checks what is known without running the model: ``(N, C, H, W)``, C against the model's input
    channels (``config["channels"]`` of a :class:`ConvNet`, else its first ``nn.Conv2d``), and
    H, W against a ConvNet's ``image_size``. Shapes only: no host synchronisation.
    """
    shape = tuple(images.shape)
    if images.ndim != 4:
        raise ConfigError(f"{who} expects images of shape (N, C, H, W), got {shape}")
    config = getattr(model, "config", None)
    config = config if isinstance(config, dict) else {}
    channels = config.get("channels")
    if channels is None:
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = conv.in_channels if conv is not None else None
    size = config.get("image_size")
    if (channels is not None and shape[1] != channels) or (size is not None and shape[2:] != (size, size)):
        takes = f"{channels} channel(s)" + (f" of {size}x{size}" if size is not None else "")
        raise ConfigError(f"{who} got images of shape {shape} ({shape[1]} channels, {shape[2]}x{shape[3]}), "
                          f"but its network takes {takes}; give images shaped like the network's data")
