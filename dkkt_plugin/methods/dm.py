"""DM (random embedding networks) and DM* (the pretrained edge model as the embedding).

DM* is not defined in the text we have; we read it as DM whose embedding function is the
pretrained edge model instead of fresh random networks (docs/method.md, 'Baselines'), and label
it so.
"""
from __future__ import annotations

import torch

from ..settings import DMConfig  # noqa: F401 (defined torch-free)
from .base import Method, check_finite


class DM(Method):
    """Distribution matching (Zhao & Bilen 2023): SGD lr 1.0, momentum 0.5, real init."""

    name = "dm"
    config_class = DMConfig

    def embedding_net(self) -> torch.nn.Module:
        return self.fresh_net()

    def setup(self) -> None:
        super().setup()
        reinit = not self.needs_edge_model
        self.dm = self.loss(self.config.dm_loss, self.embedding_net(), augment=self.augmenter(),
                            reinit=reinit, generator=self.generator)

    def step(self, iteration: int) -> dict[str, float]:
        real, real_labels = self.sample_real()
        loss = self.dm(real, real_labels, self.images, self.labels)
        check_finite(loss, f"{self.name} loss at iteration {iteration}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}


class DMStar(DM):
    """DM* (our reading): DM with the pretrained edge model as the fixed embedding function."""

    name = "dm_star"
    needs_edge_model = True

    def embedding_net(self) -> torch.nn.Module:
        return self.data.edge_model
