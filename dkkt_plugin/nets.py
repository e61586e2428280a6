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
                layers.append(nn.AvgPool2d(2) if pooling == "avg" else nn.MaxPool2d(2))
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
        """Re-draw every weight as PyTorch's default init does, from ``generator``.

        Conv and linear weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's
        kaiming-uniform default with a = sqrt(5)); norm weights 1, biases 0; BN statistics reset.
        """
        if generator is None:
            generator = torch.Generator(device=self.classifier.weight.device).manual_seed(0)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                bound = 1.0 / math.sqrt(m.weight[0].numel())  # fan_in
                _uniform_(m.weight, bound, generator)
                if m.bias is not None:
                    _uniform_(m.bias, bound, generator)
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the classifier: (B, C, H, W) -> (B, feature_dim)."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))  # (B, num_classes)


def _uniform_(t: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    # Draw on the generator's device, then copy: a CPU generator also initialises CUDA models.
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
