"""What every distillation method shares: its configuration, its data, and its state.

A method owns the synthetic images, their optimiser(s) and one CPU ``torch.Generator`` that
drives every random draw (real minibatches, augmentation, fresh networks). ``step()`` runs one
iteration and returns the numbers to log; ``state_dict()`` / ``load_state_dict()`` capture all of
it, so a run resumed from a checkpoint continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from .. import registry, runtime
from ..errors import ConfigError, NonFiniteLossError
from ..nets import ConvNet
from ..settings import (DSA_STRATEGY, AugmentConfig, AugmentedConfig,  # noqa: F401 (torch-free)
                        DistillConfig)


@dataclass
class DistillData:
    """The practical subset a method may see, plus what it needs to know about the dataset."""

    real: torch.Tensor  # (M, C, H, W) normalised practical images
    real_labels: torch.Tensor  # (M,) long
    num_classes: int
    mean: tuple
    std: tuple
    edge_model: Optional[nn.Module] = None
    classes: Optional[tuple] = None  # class names, index = label (for labelled image grids)
    data_root: Optional[str] = None  # the folder the images were read from; None: given in memory

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.real.shape[1:])


IN_MEMORY = "given in memory"  # a resolved data_root / edge_model that came as objects, not paths


def check_finite(value: torch.Tensor, what: str) -> None:
    """Raise NonFiniteLossError (before any update is applied) when ``value`` is NaN or inf."""
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteLossError(f"{what} became {float(value.detach())}; this update was not applied, so the "
                                 "images keep their last good state")


class Method(ABC):
    """Base class of distillation methods, registered in the ``dkkt_plugin.methods`` group.

    Subclasses set ``name``, ``config_class`` and ``default_init``, build their losses (through
    :meth:`loss`, i.e. the registry) in ``setup()`` and implement ``step()``. Third-party methods
    subclass this the same way.

    Speed: the losses built in ``setup()`` read the process-wide precision and backend
    (:mod:`dkkt_plugin.runtime`). A method whose results need fp32 sets ``needs_fp32 = True``:
    ``setup()`` then runs under :func:`dkkt_plugin.runtime.auto_as_fp32`, so precision ``auto``
    builds its losses in fp32 (an explicit ``bf16`` still applies). :meth:`runtime_record` says
    what ran.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = DistillConfig
    default_init: ClassVar[str] = "real"
    needs_edge_model: ClassVar[bool] = False
    needs_fp32: ClassVar[bool] = False  # True: precision "auto" means fp32 for this method's losses

    def __init__(self, config: DistillConfig, data: DistillData, *, device: Any = "cpu") -> None:
        if not isinstance(config, self.config_class):
            raise ConfigError(f"method {self.name!r} needs a {self.config_class.__name__}, "
                              f"got {type(config).__name__}")
        if self.needs_edge_model and data.edge_model is None:
            raise ConfigError(f"method {self.name!r} needs the pretrained edge model: pass "
                              "--edge-model PATH (create one with `dkkt pretrain`)")
        self.config, self.data, self.device = config, data, torch.device(device)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.real = data.real.to(self.device)
        self.real_labels = data.real_labels.to(self.device)
        self._by_class = [(self.real_labels == c).nonzero().flatten() for c in range(data.num_classes)]
        empty = [c for c, idx in enumerate(self._by_class) if idx.numel() == 0]
        if empty and self.uses_real_images:
            raise ConfigError(f"the practical subset has no image of classes {empty}")
        images, labels = self.initial_images()
        self.images = images.detach().to(self.device).requires_grad_(True)  # (K * ipc, C, H, W)
        self.labels = labels.to(self.device)  # (K * ipc,)
        with runtime.auto_as_fp32(self.needs_fp32) as speed:  # the losses read the speed settings when built
            self.speed = speed  # the settings this method's losses were built with
            self.setup()

    @property
    def uses_real_images(self) -> bool:
        """Whether this run reads the practical subset (DSV from noise does not)."""
        return True

    @property
    def init_name(self) -> str:
        """The initializer in force: ``config.init``, or the method's default for ``auto``."""
        return self.default_init if self.config.init == "auto" else self.config.init

    # -- to implement --------------------------------------------------------------------------
    def setup(self) -> None:
        """Build losses and optimisers (called once, after the images exist)."""
        self.optimizer = torch.optim.SGD([self.images], lr=self.image_lr, momentum=self.config.momentum)

    @property
    def image_lr(self) -> float:
        """Learning rate of the images' SGD (``config.lr_img``; a method may derive it)."""
        return self.config.lr_img

    @abstractmethod
    def step(self, iteration: int) -> dict[str, float]:
        """Run one iteration; return the numbers to log (at least ``loss``)."""

    # -- what runs ------------------------------------------------------------------------------
    def resolved_config(self) -> dict[str, Any]:
        """This run's settings as a nested dict (the layout of ``dataclasses.asdict(config)``)
        with every ``"auto"`` / None / by-ipc setting replaced by the value in force.

        The values are read from what the method built and uses (its initializer, the
        learning rate its image optimiser was built with, its losses' configs and loops), so a
        record holding this dict says what ran. Subclasses add theirs in
        :meth:`resolved_settings`.

        Example:
            >>> import torch
            >>> from dkkt_plugin.methods import DM, DMConfig, DistillData
            >>> data = DistillData(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), 2, (0.0,), (1.0,))
            >>> m = DM(DMConfig(ipc=1, pipc=2, net_width=4, net_depth=1), data)
            >>> r = m.resolved_config()
            >>> r["init"], r["lr_img"], r["data_root"], r["augment"]["name"]
            ('real', 1.0, 'given in memory', 'dsa')
        """
        out = dataclasses.asdict(self.config)
        for path, value in self.resolved_settings().items():
            node = out
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf in node:  # a plugin's config may lack a base setting
                node[leaf] = value
        return out

    def resolved_settings(self) -> dict[str, Any]:
        """``{dotted path: value in force}`` for the settings resolved at run time (see
        :meth:`resolved_config`); subclasses extend it with their own."""
        cfg, data = self.config, self.data
        edge = getattr(cfg, "edge_model", None)
        return {
            "data_root": getattr(cfg, "data_root", None) or data.data_root or IN_MEMORY,
            "edge_model": edge or (IN_MEMORY if data.edge_model is not None else "none"),
            "init": self.init_name,
            "lr_img": self.image_lr,
        }

    def runtime_record(self) -> dict[str, Any]:
        """The speed settings as this run uses them, for its record: ``precision`` and
        ``backend`` as its losses were built (``auto`` reads as ``fp32`` for a method with
        ``needs_fp32``), ``needs_fp32``, and per pass of its losses (those with a
        ``speed_report(images)`` method) the precision and backend that run and why the CPU
        backend does not apply (:func:`dkkt_plugin.runtime.describe_pass`).

        Example:
            >>> import torch
            >>> from dkkt_plugin import runtime
            >>> from dkkt_plugin.methods import DM, DMConfig, DistillData
            >>> data = DistillData(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), 2, (0.0,), (1.0,))
            >>> with runtime.use(precision="fp32", backend="torch"):
            ...     r = DM(DMConfig(ipc=1, pipc=2, net_width=4, net_depth=1), data).runtime_record()
            >>> r["precision"], r["backend"], r["passes"]["dm.real"]
            ('fp32', 'torch', {'precision': 'fp32', 'backend': 'torch', 'not_supported': []})
        """
        out: dict[str, Any] = {"precision": self.speed.precision, "backend": self.speed.backend,
                               "needs_fp32": self.needs_fp32, "passes": {}}
        for part in vars(self).values():
            report = getattr(part, "speed_report", None)
            if isinstance(part, nn.Module) and callable(report):
                out["passes"].update(report(self.images.detach()))
        return out

    # -- shared helpers ------------------------------------------------------------------------
    def initial_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial synthetic set from the configured (or the method's default) initializer."""
        cfg = self.config
        init = registry.load("initializers", self.init_name)
        return init(cfg.ipc, num_classes=self.data.num_classes, image_shape=self.data.image_shape,
                    dataset=(self.real, self.real_labels), model=self.data.edge_model,
                    generator=self.generator, device=self.device)

    def sample_real(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_real`` random practical images per class (all of a class when it has fewer)."""
        picks = []
        for idx in self._by_class:
            if idx.numel() > self.config.batch_real:
                idx = idx[torch.randperm(idx.numel(), generator=self.generator)[: self.config.batch_real]]
            picks.append(idx)
        picks = torch.cat(picks)
        return self.real[picks], self.real_labels[picks]  # (R, C, H, W), (R,)

    def fresh_net(self) -> nn.Module:
        """A newly initialised ConvNet (drawn from this method's generator)."""
        c, h, _ = self.data.image_shape
        return ConvNet(c, self.data.num_classes, h, width=self.config.net_width,
                       depth=self.config.net_depth, generator=self.generator, device=self.device)

    def augmenter(self):
        """The configured Siamese augmentation (group ``augmentations``), drawing from this
        method's generator; None for a method without one or when its strategy is empty."""
        aug = getattr(self.config, "augment", None)
        if aug is None or aug.strategy.lower() in ("", "none"):
            return None
        return registry.load("augmentations", aug.name)(aug.strategy, generator=self.generator)

    def loss(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """The registered loss ``name`` (group ``losses``) built with these arguments, on this
        method's device."""
        made = registry.create("losses", name, *args, **kwargs)
        return made.to(self.device) if isinstance(made, nn.Module) else made

    def extra_outputs(self) -> dict[str, torch.Tensor]:
        """Tensors saved beside the images in the synthetic set (e.g. multipliers)."""
        return {}

    # -- state ---------------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: images, optimisers, generator, extras."""
        return {
            "images": self.images.detach().cpu().clone(),
            "labels": self.labels.cpu().clone(),
            "generator": self.generator.get_state(),
            # deep copies: an optimizer's state_dict() holds its live momentum buffers
            "optimizers": {k: copy.deepcopy(o.state_dict()) for k, o in self.optimizers().items()},
            "extra": {k: v.detach().cpu().clone() for k, v in self.extra_state().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.device))
        self.labels = state["labels"].to(self.device)
        self.generator.set_state(state["generator"])
        for k, o in self.optimizers().items():
            lrs = [group["lr"] for group in o.param_groups]  # this config's, possibly changed on resume
            o.load_state_dict(state["optimizers"][k])
            for group, lr in zip(o.param_groups, lrs):
                group["lr"] = lr
        self.load_extra_state({k: v.to(self.device) for k, v in state["extra"].items()})

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors beyond images/optimisers/generator that a checkpoint must keep."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

