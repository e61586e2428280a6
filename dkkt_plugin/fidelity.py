"""How faithful a synthetic set is: its spectrum, and whether other networks can read it.

- :func:`high_frequency_share`: the share of spectral power at or above 0.25 cycles/pixel (each
  image's mean removed). The practical paper's Fig. 3: DSVs are the low-frequency part, DM
  images the high-frequency part. White noise gives about 0.6; natural images far less.
- :func:`transfer_accuracy`: the accuracy of an *independent* classifier (another architecture
  or seed than the edge model) on the synthetic images. High edge accuracy with low transfer
  accuracy means the class information sits in patterns only the edge model reads.

Example:
    >>> x = torch.zeros(1, 1, 8, 8); x[..., ::2] = 1.0          # vertical stripes: Nyquist only
    >>> round(high_frequency_share(x), 3)
    1.0
    >>> freqs, power = radial_power_spectrum(x)
    >>> int(power.argmax()), float(freqs[-1])
    (4, 0.5)
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

HIGH_FREQUENCY = 0.25  # cycles per pixel: half the Nyquist frequency


def radial_power_spectrum(images: Any) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum, averaged over images and channels.

    Each image channel has its mean removed (no DC term); the 2-D power ``|FFT|² / (H W)`` is
    averaged over rings of integer radius around the zero frequency, up to the Nyquist radius.

    Args:
        images: ``(N, C, H, W)`` (or ``(N, H, W)``) array or tensor.

    Returns:
        ``(freqs, power)``: ring radius in cycles per pixel (0 … 0.5) and the mean power on it.
    """
    x = images.detach().cpu().double().numpy() if torch.is_tensor(images) else np.asarray(images, np.float64)
    h, w = x.shape[-2:]
    x = x.reshape(-1, h, w)  # (N*C, H, W)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fftshift(np.fft.fft2(x), axes=(1, 2))) ** 2 / (h * w)  # (N*C, H, W)
    power = power.mean(0)  # (H, W)
    yy, xx = np.indices((h, w))
    radius = np.rint(np.hypot((yy - h // 2) / h, (xx - w // 2) / w) * min(h, w)).astype(int)  # (H, W)
    nyquist = min(h, w) // 2
    inside = radius <= nyquist
    sums = np.bincount(radius[inside], weights=power[inside], minlength=nyquist + 1)
    counts = np.bincount(radius[inside], minlength=nyquist + 1)
    return np.arange(nyquist + 1) / min(h, w), sums / np.maximum(counts, 1)


def high_frequency_share(images: Any, cutoff: float = HIGH_FREQUENCY) -> float:
    """Share of the radially averaged power (rings 1 … Nyquist, summed) at or above ``cutoff``
    cycles/pixel; NaN for constant images."""
    freqs, power = radial_power_spectrum(images)
    total = power[1:].sum()
    return float(power[freqs >= cutoff - 1e-12].sum() / total) if total > 0 else float("nan")


@torch.no_grad()
def transfer_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of ``model`` (in eval mode) on the synthetic ``images``; the model's mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = (model(images.to(device)).argmax(1) == labels.to(device)).float().mean()
    model.train(was_training)
    return float(correct)


def fidelity(images: torch.Tensor, labels: torch.Tensor, *, edge_model: Optional[nn.Module] = None,
             transfer_model: Optional[nn.Module] = None) -> dict[str, float]:
    """The fidelity measures stored in every run's record: ``high_frequency_share``, and the
    accuracy of the edge model and of an independent ``transfer_model`` on the images (if given)."""
    out = {"high_frequency_share": high_frequency_share(images)}
    if edge_model is not None:
        out["edge_accuracy"] = transfer_accuracy(edge_model, images, labels)
    if transfer_model is not None:
        out["transfer_accuracy"] = transfer_accuracy(transfer_model, images, labels)
    return out
