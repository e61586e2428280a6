"""A minimal third-party plugin: one initializer and one loss, found through entry points."""
import torch
from torch import nn


def constant_init(ipc, *, num_classes, image_shape, dataset=None, model=None, generator=None,
                  device=None, dtype=torch.float32, value: float = 0.5):
    """Every synthetic image filled with ``value``."""
    labels = torch.arange(num_classes, device=device).repeat_interleave(ipc)
    return torch.full((labels.numel(), *image_shape), value, device=device, dtype=dtype), labels


class MeanL1Loss(nn.Module):
    """L1 distance between the mean real and mean synthetic image."""

    def forward(self, real, real_labels, syn, syn_labels):
        return (real.mean(0) - syn.mean(0)).abs().mean()
