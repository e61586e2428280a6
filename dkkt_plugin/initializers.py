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

from typing import Optional, Sequence

import torch
from torch import nn

from .errors import ConfigError, DatasetError

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


def dsv_init(ipc: int, *, num_classes: int, image_shape: Sequence[int], dataset=None,
             model: Optional[nn.Module] = None, generator: Optional[torch.Generator] = None,
             device=None, dtype: torch.dtype = torch.float32, config=None) -> Tensors:
    """Deep Support Vectors generated from the pretrained ``model`` (from noise, or from real
    images with ``config.init="real"``).

    This runs the ``dsv`` method itself (:class:`dkkt_plugin.methods.DSV`) for
    ``config.iterations`` steps: the initializer, the ``dsv`` method and the DKKT part of
    ``dm_dkkt`` share one generator and one recipe. ``config`` is a
    :class:`~dkkt_plugin.methods.DSVMethodConfig` (its defaults when omitted); ``ipc`` and, when a
    ``generator`` is given, the seed (one draw from it) override its own.
    """
    import dataclasses

    from .methods.base import DistillData
    from .methods.dkkt import DSV, DSVMethodConfig

    if model is None:
        raise ConfigError("the 'dsv' initializer needs model=... (the pretrained classifier)")
    _labels(ipc, num_classes, device)  # checks ipc
    config = config if config is not None else DSVMethodConfig()
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else config.seed
    init = "noise" if config.init in ("auto", "dsv") else config.init  # never DSVs from DSVs
    config = dataclasses.replace(config, ipc=ipc, seed=seed, init=init)
    if dataset is not None:
        real, real_labels = _as_tensors(dataset)
    else:
        real, real_labels = torch.zeros(0, *image_shape), torch.zeros(0, dtype=torch.long)
    data = DistillData(real, real_labels, num_classes, (0.0,), (1.0,), model)
    method = DSV(config, data, device=device if device is not None else "cpu")
    for it in range(config.iterations):
        method.step(it)
    return method.images.detach().to(device=device, dtype=dtype), method.labels


def _as_tensors(dataset) -> Tensors:
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2 and all(torch.is_tensor(t) for t in dataset):
        return dataset[0], dataset[1].long()
    from .data.practical import PracticalSubset

    if not isinstance(dataset, PracticalSubset):
        dataset = PracticalSubset(dataset, "all")
    return dataset.tensors()
