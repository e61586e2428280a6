"""DM (random embedding networks) and DM* (the pretrained edge model as the embedding).

DM* is not defined in the text we have; we read it as DM whose embedding function is the
pretrained edge model instead of fresh random networks (DESIGN.md §2), and label it so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .base import AugmentedConfig, Method, check_finite, precision_in_force


@dataclass(frozen=True)
class DMConfig(AugmentedConfig):
    """DM / DM* settings (DatasetCondensation's defaults: SGD lr 1.0, momentum 0.5, batch_real 256)."""

    # registered loss (group dkkt_plugin.losses) built as DMLoss is: (net, augment=, reinit=,
    # generator=, real_precision=)
    dm_loss: str = "dm"
    # the real images' embedding: bf16, fp32 (exact) or auto: bf16 where the hardware computes bf16
    # natively (CUDA, CPUs with AVX-512 BF16 or AMX; with the fused kernels a DM step 1.9-2.8x faster
    # than in fp32 on our CPU, benchmarks/results/speed-cpu), else fp32
    real_precision: Literal["auto", "bf16", "fp32"] = "auto"
    # torch.compile the real images' embedding where the fused kernels do not apply
    # (DMLoss(compile_real=True)): a one-off 8-30 s compile per process; needs a C++ compiler
    compile_real: bool = False
    # the package's fused CPU kernels for that embedding (DMLoss(fused_real=True), dkkt_plugin.fused)
    fused_real: bool = True
    # the synthetic images' forward and backward with each ConvNet block's norm, ReLU and pooling
    # fused on the CPU (DMLoss(fused_syn=True), dkkt_plugin.nets.fused_blocks)
    fused_syn: bool = True


def speed_options(config) -> dict:
    """DMLoss's speed switches that differ from their defaults (plugin losses need not take them)."""
    return {**({"compile_real": True} if config.compile_real else {}),
            **({} if config.fused_real else {"fused_real": False}),
            **({} if config.fused_syn else {"fused_syn": False})}


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
                            reinit=reinit, generator=self.generator, real_precision=self.config.real_precision,
                            **speed_options(self.config))

    def resolved_settings(self) -> dict:
        """The base's, plus the real embedding's precision as the DM loss runs it."""
        return {**super().resolved_settings(),
                "real_precision": precision_in_force(self.dm, self.config.real_precision, self.real)}

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
