"""A minimal third-party plugin: an initializer, a DM-style loss and a Siamese augmentation,
found through entry points and selected by dkkt-plugin's flags (``--init constant``,
``--dm-loss mean_embedding_l1``, ``--augment.name brightness_jitter``)."""
import torch
from torch import nn


def constant_init(ipc, *, num_classes, image_shape, dataset=None, model=None, generator=None,
                  device=None, dtype=torch.float32, value: float = 0.5):
    """Every synthetic image filled with ``value``."""
    labels = torch.arange(num_classes, device=device).repeat_interleave(ipc)
    return torch.full((labels.numel(), *image_shape), value, device=device, dtype=dtype), labels


class MeanL1Loss(nn.Module):
    """A DM-style loss (built as DMLoss is): L1 distance between the class means of the real and
    the synthetic images, after one Siamese augmentation draw per class. ``net`` is not used."""

    def __init__(self, net=None, *, augment=None, reinit=True, generator=None, real_precision="auto"):
        super().__init__()
        self.augment = augment

    def forward(self, real, real_labels, syn, syn_labels):
        if real_labels is None:  # unlabelled: one group
            real_labels = torch.zeros(real.shape[0], dtype=torch.long)
            syn_labels = torch.zeros(syn.shape[0], dtype=torch.long)
        classes = syn_labels.unique()
        if self.augment is not None:
            draw = self.augment.sample(int(classes.max()) + 1)
            real, syn = self.augment(real, draw, real_labels), self.augment(syn, draw, syn_labels)
        loss = syn.new_zeros(())
        for c in classes:
            loss = loss + (real[real_labels == c].mean(0) - syn[syn_labels == c].mean(0)).abs().mean()
        return loss


class BrightnessJitter:
    """Siamese brightness shift: one N(0, 0.1) shift per group (its ``strategy`` is ignored).
    ``calls`` counts applications, so tests can see that a method really used it."""

    calls = 0

    def __init__(self, strategy="", *, generator=None):
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def sample(self, num_groups=1, *, device=None, generator=None, shared_family=False):
        shift = 0.1 * torch.randn(num_groups, generator=generator or self.generator)  # (G,)
        return shift if device is None else shift.to(device)

    def __call__(self, x, draw=None, groups=None):
        BrightnessJitter.calls += 1
        draw = self.sample(1) if draw is None else draw.to(x.device)
        groups = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if groups is None else groups
        return x + draw[groups].to(x.dtype)[:, None, None, None]  # (B, C, H, W)
