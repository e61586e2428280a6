"""dkkt-plugin: Deep-KKT loss and practical-setting dataset distillation for PyTorch.

The public API: everything a user's own distillation loop needs imports from here.

Example:
    >>> import torch
    >>> from dkkt_plugin import ConvNet, DKKTLoss
    >>> edge_model = ConvNet(channels=1, num_classes=10, image_size=28, width=8)
    >>> images = torch.randn(10, 1, 28, 28, requires_grad=True)
    >>> dkkt = DKKTLoss(edge_model, num_images=10)
    >>> dkkt(images, torch.arange(10)).shape
    torch.Size([])
"""
__version__ = "0.1.0"

from .augment import DSA, DSAConfig, DSADraw  # noqa: E402
from .config import Pipc, parse_pipc  # noqa: E402
from .data import ImageDataset, PracticalSubset, load_cifar10, load_fashion_mnist  # noqa: E402
from .demo import packaged_edge_model  # noqa: E402
from .engine import (RunResult, append_evaluation, build_config, distill, load_synthetic,  # noqa: E402
                     read_evaluations, run_distillation, save_synthetic)
from .errors import (CheckpointError, ConfigError, DatasetError, DkktError, NonFiniteLossError,  # noqa: E402
                     PluginError, UnknownComponentError)
from .evaluation import EvalProtocol, EvalResult, evaluate, evaluate_synthetic, get_protocol  # noqa: E402
from .initializers import dsv_init, noise_init, real_init  # noqa: E402
from .losses import DKKTConfig, DKKTLoss, DKKTTerms, DMLoss, GradientMatchingLoss  # noqa: E402
from .methods import DistillConfig, DistillData, Method  # noqa: E402
from .nets import ConvNet, fused_blocks  # noqa: E402
from .pretrain import PretrainConfig, load_edge_model, pretrain, save_edge_model  # noqa: E402
from .provenance import provenance, resolve_device  # noqa: E402
from .training import TrainConfig, accuracy, train_classifier  # noqa: E402

__all__ = [
    "__version__",
    # losses and augmentation: one term of any loop
    "DKKTLoss", "DKKTConfig", "DKKTTerms", "DMLoss", "GradientMatchingLoss", "DSA", "DSAConfig", "DSADraw",
    # data and models
    "PracticalSubset", "ImageDataset", "load_fashion_mnist", "load_cifar10", "Pipc", "parse_pipc", "ConvNet",
    "fused_blocks",
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
