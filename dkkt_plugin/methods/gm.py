"""DC and DSA: gradient matching with outer / inner loops (Zhao et al. 2021; Zhao & Bilen 2021).

One iteration = a freshly initialised ConvNet, then ``outer_loop`` times: match the classwise
gradients and update the images; between two outer steps train the network for ``inner_loop``
epochs on the current synthetic set (with per-image DSA for DSA).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..settings import LOOPS, DSAConfig, GMConfig, default_loops  # noqa: F401 (defined torch-free)
from .base import Method, check_finite

class DC(Method):
    """Dataset condensation with gradient matching (no augmentation)."""

    name = "dc"
    config_class = GMConfig

    def setup(self) -> None:
        super().setup()
        outer, inner = default_loops(self.config.ipc)
        self.outer_loop = self.config.outer_loop or outer
        self.inner_loop = self.config.inner_loop or inner
        self.aug = self.augmenter()
        self.gm = self.loss(self.config.matching_loss, self.config.metric, augment=self.aug)

    def resolved_settings(self) -> dict:
        """The base's, plus the loops in force (0 in the config: by ipc, :func:`default_loops`)."""
        return {**super().resolved_settings(), "outer_loop": self.outer_loop, "inner_loop": self.inner_loop}

    def step(self, iteration: int) -> dict[str, float]:
        net = self.fresh_net()
        net_opt = torch.optim.SGD(net.parameters(), lr=self.config.lr_net)
        logs = []
        for ol in range(self.outer_loop):
            real, real_labels = self.sample_real()
            loss = self.gm(net, real, real_labels, self.images, self.labels)
            where = f"{self.name} loss at iteration {iteration}, outer step {ol}"
            check_finite(loss, where)
            logs.append(self.update_images(loss, where))
            if ol < self.outer_loop - 1:
                for _ in range(self.inner_loop):
                    self._train_net_epoch(net, net_opt)
        return {key: sum(log[key] for log in logs) / len(logs) for key in logs[0]}  # means over outer steps

    def update_images(self, loss: torch.Tensor, where: str) -> dict[str, float]:
        """One image update from the matching loss of an outer step (all classes of the synthetic
        set); returns the numbers to log (at least ``loss``). ``where`` names the step in errors."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}

    def _train_net_epoch(self, net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        x_all, y_all = self.images.detach(), self.labels
        order = torch.randperm(x_all.shape[0], generator=self.generator).to(self.device)
        for start in range(0, x_all.shape[0], self.config.batch_train):
            idx = order[start:start + self.config.batch_train]
            x, y = x_all[idx], y_all[idx]
            if self.aug is not None:  # per-image parameters, one family per minibatch
                draw = self.aug.sample(x.shape[0], shared_family=True)
                x = self.aug(x, draw, torch.arange(x.shape[0], device=x.device))
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()


class DSAMethod(DC):
    """Gradient matching with differentiable Siamese augmentation."""

    name = "dsa"
    config_class = DSAConfig
