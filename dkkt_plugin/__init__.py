"""dkkt-plugin: Deep-KKT loss and practical-setting dataset distillation for PyTorch.

The public API: everything a user's own distillation loop needs imports from here. Each name
is imported on first use (``import dkkt_plugin`` alone loads neither torch nor any submodule),
so the ``dkkt`` command line answers ``--help`` without loading torch.

Example:
    >>> import torch
    >>> from dkkt_plugin import ConvNet, DKKTLoss
    >>> edge_model = ConvNet(channels=1, num_classes=10, image_size=28, width=8)
    >>> images = torch.randn(10, 1, 28, 28, requires_grad=True)
    >>> dkkt = DKKTLoss(edge_model, num_images=10)
    >>> dkkt(images, torch.arange(10)).shape
    torch.Size([])
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.2.0"

# public name -> the submodule that defines it (imported on first access, PEP 562)
_SOURCES: dict[str, str] = {
    **dict.fromkeys(("DSA", "DSAConfig", "DSADraw"), "augment"),
    **dict.fromkeys(("Pipc", "parse_pipc"), "config"),
    **dict.fromkeys(("ImageDataset", "PracticalSubset", "load_cifar10", "load_fashion_mnist"), "data"),
    "packaged_edge_model": "packaged",
    **dict.fromkeys(("RunResult", "append_evaluation", "build_config", "distill", "load_synthetic",
                     "read_evaluations", "run_distillation", "save_synthetic"), "engine"),
    **dict.fromkeys(("CheckpointError", "ConfigError", "DatasetError", "DkktError", "NonFiniteLossError",
                     "PluginError", "UnknownComponentError"), "errors"),
    **dict.fromkeys(("EvalProtocol", "EvalResult", "evaluate", "evaluate_synthetic", "get_protocol"), "evaluation"),
    **dict.fromkeys(("dsv_init", "noise_init", "real_init"), "initializers"),
    **dict.fromkeys(("DKKTConfig", "DKKTLoss", "DKKTTerms", "DMLoss", "GradientMatchingLoss"), "losses"),
    **dict.fromkeys(("DistillConfig", "DistillData", "Method"), "methods"),
    "ConvNet": "nets",
    **dict.fromkeys(("PretrainConfig", "load_edge_model", "pretrain", "save_edge_model"), "pretrain"),
    **dict.fromkeys(("provenance", "resolve_device"), "provenance"),
    **dict.fromkeys(("TrainConfig", "accuracy", "train_classifier"), "training"),
}

__all__ = [
    "__version__",
    # losses and augmentation: one term of any loop
    "DKKTLoss", "DKKTConfig", "DKKTTerms", "DMLoss", "GradientMatchingLoss", "DSA", "DSAConfig", "DSADraw",
    # data and models
    "PracticalSubset", "ImageDataset", "load_fashion_mnist", "load_cifar10", "Pipc", "parse_pipc", "ConvNet",
    "load_edge_model", "save_edge_model", "packaged_edge_model", "pretrain", "PretrainConfig",
    # initial synthetic sets
    "noise_init", "real_init", "dsv_init",
    # whole runs
    "distill", "run_distillation", "build_config", "RunResult", "DistillConfig", "DistillData", "Method",
    "load_synthetic", "save_synthetic", "append_evaluation", "read_evaluations",
    # evaluation and training
    "evaluate", "evaluate_synthetic", "get_protocol", "EvalProtocol", "EvalResult", "TrainConfig",
    "train_classifier", "accuracy",
    # provenance and errors
    "provenance", "resolve_device", "DkktError", "ConfigError", "DatasetError", "PluginError",
    "UnknownComponentError", "CheckpointError", "NonFiniteLossError",
]


class _Package(types.ModuleType):
    """This package's module type. Importing a submodule binds it as an attribute of the package;
    where a public function has the submodule's name (``pretrain``, ``provenance``), the function
    stays bound instead, as it was when this package imported every name eagerly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _SOURCES.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    """Import the submodule that defines the public ``name`` and cache the name here."""
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
