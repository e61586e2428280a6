"""Initial synthetic sets: Gaussian noise, real practical images, or Deep Support Vectors.

Every initializer has the same call signature, so the engine (and any plugin) can use them
interchangeably:

    images, labels = init(ipc, num_classes=K, image_shape=(C, H, W), dataset=..., model=...,
                          generator=g, device=..., dtype=...)

``images`` is ``(K * ipc, C, H, W)`` in the dataset's normalised space, ``labels`` is
``(K * ipc,)`` long, grouped by class (``[0]*ipc + [1]*ipc + ...``).

Example:
    >>> images, labels = noise_init(2, num_classes=3, image_shape=(1, 8, 8),
    ...                             generator=torch.Generator().manual_seed(0))
    >>> images.shape, labels.tolist()
    (torch.Size([6, 1, 8, 8]), [0, 0, 1, 1, 2, 2])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

from .errors import ConfigError, DatasetError
from .losses.dkkt import DKKTConfig, DKKTLoss

Tensors = tuple[torch.Tensor, torch.Tensor]


def _labels(ipc: int, num_classes: int, device) -> torch.Tensor:
    if not isinstance(ipc, int) or ipc < 1:
        raise ConfigError(f"ipc (images per class) must be a positive int, got {ipc!r}")
    return torch.arange(num_classes, device=device).repeat_interleave(ipc)  # (K * ipc,)


def noise_init(ipc: int, *, num_classes: int, image_shape: Sequence[int], dataset=None, model=None,
               generator: Optional[torch.Generator] = None, device=None,
               dtype: torch.dtype = torch.float32) -> Tensors:
    """Standard normal images (the normalised data's scale), ``ipc`` per class."""
    labels = _labels(ipc, num_classes, device)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    images = torch.randn((labels.numel(), *image_shape), generator=gen, device=gen.device, dtype=dtype)
    return images.to(device), labels


def real_init(ipc: int, *, num_classes: int, image_shape: Sequence[int], dataset=None, model=None,
              generator: Optional[torch.Generator] = None, device=None,
              dtype: torch.dtype = torch.float32) -> Tensors:
    """``ipc`` images per class drawn without replacement from ``dataset`` (a practical subset).

    ``dataset`` is anything :class:`~dkkt_plugin.data.PracticalSubset` accepts, or a
    ``(images, labels)`` pair of tensors.
    """
    if dataset is None:
        raise ConfigError("the 'real' initializer needs dataset=... (the practical subset to draw from)")
    x, y = _as_tensors(dataset)
    labels = _labels(ipc, num_classes, device)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    chosen = []
    for c in range(num_classes):
        idx = (y == c).nonzero().flatten()
        if idx.numel() < ipc:
            raise DatasetError(
                f"class {c} has {idx.numel()} real image(s) but ipc={ipc} were asked for; "
                f"use ipc <= {idx.numel()}, a larger pipc, or init='noise'"
            )
        chosen.append(idx[torch.randperm(idx.numel(), generator=gen)[:ipc]])
    images = x[torch.cat(chosen)]
    if tuple(images.shape[1:]) != tuple(image_shape):
        raise ConfigError(f"dataset images have shape {tuple(images.shape[1:])}, expected {tuple(image_shape)}")
    return images.to(device=device, dtype=dtype).clone(), labels


@dataclass(frozen=True)
class DSVConfig:
    """How Deep Support Vectors are generated from a pretrained model."""

    start: str = "noise"  # "noise" or "real" (needs a dataset)
    iterations: int = 300
    lr_img: float = 0.05  # Adam on the images
    lr_multiplier: float = 0.05  # Adam on the multipliers' parameters
    augment: str = "color_crop_cutout_flip_scale_rotate"  # the manifold condition ("" for none)
    # L1 here, not the distillation default cos: its magnitude-based residual is what pulls the
    # images towards the decision boundary (tested: low-margin, correctly classified DSVs).
    dkkt: DKKTConfig = field(default_factory=lambda: DKKTConfig(alpha=1.0, distance="l1", params="all",
                                                                tv_weight=0.01))


def generate_dsv(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 config: DSVConfig = DSVConfig(), *, generator: Optional[torch.Generator] = None,
                 progress=None) -> Tensors:
    """Optimise ``images`` (a starting point) into DSVs of ``model`` by minimising the DKKT loss.

    Returns the images and their multipliers λ. ``progress`` (optional) is called with
    ``(iteration, DKKTTerms)`` after each step.
    """
    from .augment import DSA  # local: the DSA module pulls in kornia

    augment = DSA(config.augment, generator=generator) if config.augment else None
    x = images.detach().clone().requires_grad_(True)
    dkkt = DKKTLoss(model, x.shape[0], config.dkkt, augment=augment).to(x.device)
    opt = torch.optim.Adam([{"params": [x], "lr": config.lr_img},
                            {"params": list(dkkt.parameters()), "lr": config.lr_multiplier}])
    for it in range(config.iterations):
        terms = dkkt.terms(x, labels)
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        opt.step()
        dkkt.project_()
        if progress is not None:
            progress(it, terms)
    return x.detach(), dkkt.multipliers.detach()


def dsv_init(ipc: int, *, num_classes: int, image_shape: Sequence[int], dataset=None,
             model: Optional[nn.Module] = None, generator: Optional[torch.Generator] = None,
             device=None, dtype: torch.dtype = torch.float32,
             config: DSVConfig = DSVConfig()) -> Tensors:
    """Deep Support Vectors generated from the pretrained ``model`` alone (or from real images)."""
    if model is None:
        raise ConfigError("the 'dsv' initializer needs model=... (the pretrained classifier)")
    if config.start == "noise":
        start, labels = noise_init(ipc, num_classes=num_classes, image_shape=image_shape,
                                   generator=generator, device=device, dtype=dtype)
    elif config.start == "real":
        start, labels = real_init(ipc, num_classes=num_classes, image_shape=image_shape,
                                  dataset=dataset, generator=generator, device=device, dtype=dtype)
    else:
        raise ConfigError(f"DSVConfig.start must be 'noise' or 'real', got {config.start!r}")
    images, _ = generate_dsv(model, start, labels, config, generator=generator)
    return images, labels


def _as_tensors(dataset) -> Tensors:
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2 and all(torch.is_tensor(t) for t in dataset):
        return dataset[0], dataset[1].long()
    from .data.practical import PracticalSubset

    if not isinstance(dataset, PracticalSubset):
        dataset = PracticalSubset(dataset, "all")
    return dataset.tensors()
