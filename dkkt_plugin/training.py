"""Training and testing a classifier: shared by ``dkkt pretrain`` and synthetic-set evaluation.

One loop covers both evaluation protocols (docs/method.md, 'Evaluation protocols'): plain SGD
(momentum, weight decay, learning rate × 0.1 at half the epochs) and SAM (from the maintained
``pytorch-optimizer`` package) around the same SGD. Minibatch order and augmentation draws come
from an explicit generator.

Speed: a network whose samples are independent (``per_sample``: instance norm, as the
DatasetCondensation ConvNet) runs each minibatch's forward and backward in chunks of
``TrainConfig.chunk_size`` images with summed gradients, the same gradient as one pass up to float
rounding; on the CPU chunks of 16 images with the fused blocks, else 8
(:func:`dkkt_plugin.cpu.default_chunk_size`), keep the activations in the caches. The
process-wide switch (:mod:`dkkt_plugin.runtime`, read when training starts) chooses the rest:
precision ``auto`` trains under bf16 autocast where the hardware computes bf16 natively (CUDA;
CPUs with AVX-512 BF16 or AMX) and in fp32 elsewhere, ``bf16`` under bf16 autocast, ``fp32`` in
fp32 (weights, optimiser state and the loss stay fp32 throughout); backend ``cpu`` trains a
ConvNet on the CPU with the package's fused blocks (:func:`dkkt_plugin.cpu.fused`: each block's
norm, ReLU and pooling, and block 1 whole, in C kernels with their backward), ``compile`` runs
each chunk's forward and loss through ``torch.compile`` (inductor fuses every block's norm, ReLU
and pooling; a one-off compile per process), ``torch`` runs torch's ops; all give the same
gradient up to float rounding (``benchmarks/results/speed-cpu`` times them). The loss is summed
on the device and read once per epoch.

Example:
    >>> from dkkt_plugin.nets import ConvNet
    >>> net = ConvNet(1, 2, 8, width=4, depth=1)
    >>> x, y = torch.randn(8, 1, 8, 8), torch.tensor([0, 1] * 4)
    >>> cfg = TrainConfig(epochs=2, batch_size=4)
    >>> _ = train_classifier(net, x, y, cfg, generator=torch.Generator().manual_seed(0))
    >>> 0.0 <= accuracy(net, x, y) <= 1.0
    True
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu, runtime
from .errors import ConfigError, NonFiniteLossError
from .progress import progress_bar


@dataclass(frozen=True)
class TrainConfig:
    """How a classifier is trained."""

    epochs: int = 300
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # sgd, or sam (SAM around SGD, pytorch-optimizer's implementation)
    sam_rho: float = 0.05  # SAM's neighbourhood radius ρ
    lr_schedule: str = "step"  # "step": lr × 0.1 at half the epochs (DM protocol); "cosine"; "none"
    augment: str = ""  # augmentation strategy applied per minibatch ('' = none)
    augmentation: str = "dsa"  # registered augmentation (group dkkt_plugin.augmentations) applying it
    # images per forward/backward inside a minibatch (per-sample networks only; gradients are
    # summed, so the step is unchanged); auto: dkkt_plugin.cpu.default_chunk_size(training=True)
    chunk_size: Optional[int] = None

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "sam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'sam', got {self.optimizer!r}")
        if self.lr_schedule not in ("step", "cosine", "none"):
            raise ConfigError(f"lr_schedule must be 'step', 'cosine' or 'none', got {self.lr_schedule!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {self}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1 or None, got {self.chunk_size}")


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    kw = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sam":
        from pytorch_optimizer import SAM

        return SAM(model.parameters(), torch.optim.SGD, rho=cfg.sam_rho, **kw)
    return torch.optim.SGD(model.parameters(), **kw)


def _lr_factor(cfg: TrainConfig, epoch: int) -> float:
    if cfg.lr_schedule == "step":
        return 0.1 if epoch >= cfg.epochs // 2 else 1.0
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    return 1.0


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                     *, generator: torch.Generator, desc: str = "train",
                     on_epoch: Optional[Callable[[int, float], None]] = None) -> float:
    """Train ``model`` in place on ``(images, labels)``; returns the last epoch's mean loss.

    Args:
        model: the network (already on the data's device).
        images: ``(N, C, H, W)``; labels: ``(N,)`` long.
        cfg: optimisation settings.
        generator: CPU generator for minibatch order and augmentation draws.
        desc: progress-bar label.
        on_epoch: called with ``(epoch, mean_loss)`` after every epoch.

    Precision and backend: the process-wide settings when training starts
    (:mod:`dkkt_plugin.runtime`; precision ``auto``: bf16 autocast where the device computes bf16
    natively).

    Raises:
        NonFiniteLossError: when the loss becomes NaN or infinite.
    """
    aug = None
    if cfg.augment:
        from . import registry

        aug = registry.load("augmentations", cfg.augmentation)(cfg.augment, generator=generator)
    opt = _optimizer(model, cfg)
    model.train()
    n = images.shape[0]
    speed = runtime.settings()
    chunk = _chunk_size(model, cfg, images.device, fused=speed.backend == "cpu")
    bf16 = runtime.runs_bf16(images, speed.precision)
    chunk_loss = cpu.StaticCompiled(_chunk_loss, "backend 'compile', classifier training", "training eagerly instead",
                                    enabled=speed.backend == "compile")
    mean_loss = float("nan")
    bar = progress_bar(range(cfg.epochs), desc=desc, unit="epoch")
    with cpu.fused(model, enabled=speed.backend == "cpu"):  # a ConvNet's blocks fused on the CPU
        for epoch in bar:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * _lr_factor(cfg, epoch)
            order = torch.randperm(n, generator=generator).to(images.device)
            total = torch.zeros((), device=images.device)
            for start in range(0, n, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                x, y = images[idx], labels[idx]
                if aug is not None:  # per-image params, one family per minibatch (reference DSA)
                    draw = aug.sample(x.shape[0], shared_family=True)
                    x = aug(x, draw, torch.arange(x.shape[0], device=x.device))
                total += _step(model, opt, x, y, cfg.optimizer == "sam", chunk, bf16, chunk_loss) * x.shape[0]
            mean_loss = float(total) / n  # one host sync per epoch
            if not math.isfinite(mean_loss):
                raise NonFiniteLossError(f"{desc}: training loss became {mean_loss} at epoch {epoch}; "
                                         "lower the learning rate")
            if on_epoch is not None:
                on_epoch(epoch, mean_loss)
            bar.set_postfix(loss=f"{mean_loss:.3f}")
    return mean_loss


def _chunk_size(model: nn.Module, cfg: TrainConfig, device: torch.device, *, fused: bool) -> int:
    """Images per forward/backward: chunks only where samples are independent in training mode."""
    if not getattr(model, "per_sample", False):
        return 2 ** 62
    if cfg.chunk_size is not None:
        return cfg.chunk_size
    return cpu.default_chunk_size(device, training=True, fused=fused)


def _chunk_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Per-sample cross-entropy of one chunk, (B,) fp32; the forward under bf16 autocast if asked."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)  # (B, K)
    return F.cross_entropy(logits.float(), y, reduction="none")


def _loss_and_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int, bf16: bool,
                   chunk_loss: cpu.StaticCompiled) -> torch.Tensor:
    """Mean cross-entropy over the minibatch and its gradient, accumulated chunk by chunk."""
    b = x.shape[0]
    total = x.new_zeros(())
    pad = chunk if chunk < b else None  # several chunks (per-sample networks): one compiled shape
    for xc, yc in zip(x.split(chunk), y.split(chunk)):
        loss = chunk_loss(model, xc, yc, bf16, pad_to=pad).sum() / b  # this chunk's share of the mean
        loss.backward()
        total += loss.detach()
    return total


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, sam: bool,
          chunk: int, bf16: bool, chunk_loss: cpu.StaticCompiled) -> torch.Tensor:
    """One optimiser step on the minibatch; returns its mean loss (a 0-dim tensor, not synced)."""
    opt.zero_grad(set_to_none=True)
    loss = _loss_and_grad(model, x, y, chunk, bf16, chunk_loss)
    if sam:
        def closure():
            opt.zero_grad(set_to_none=True)
            return _loss_and_grad(model, x, y, chunk, bf16, chunk_loss)

        opt.step(closure)
    else:
        opt.step()
    return loss


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: Optional[int] = None) -> float:
    """Fraction of ``images`` that ``model`` (in eval mode) assigns to ``labels``.

    ``batch_size`` images per forward; ``None``: :func:`dkkt_plugin.cpu.default_chunk_size` (at
    most 1024).
    """
    if batch_size is None:
        batch_size = min(cpu.default_chunk_size(images.device), 1024)
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        out = model(images[start:start + batch_size])
        correct += int((out.argmax(1) == labels[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / max(images.shape[0], 1)
