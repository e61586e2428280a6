"""Fails when a public name disappears (the names README and users import)."""
import importlib

import pytest

PUBLIC = {
    "dkkt_plugin": ["__version__"],
    "dkkt_plugin.errors": ["DkktError", "ConfigError", "DatasetError", "PluginError",
                           "UnknownComponentError", "CheckpointError", "NonFiniteLossError"],
    "dkkt_plugin.registry": ["discover", "names", "get", "load", "create", "GROUPS", "AUTOLOAD_ENV"],
    "dkkt_plugin.nets": ["ConvNet", "build_model"],
    "dkkt_plugin.losses": ["DKKTConfig", "DKKTLoss", "DKKTTerms", "DMLoss", "GradientMatchingLoss",
                           "gradient_distance"],
    "dkkt_plugin.losses.kkt": ["select_parameters", "per_sample_grads", "fit_multipliers_nnls", "margins"],
    "dkkt_plugin.initializers": ["noise_init", "real_init", "dsv_init", "generate_dsv", "DSVConfig"],
    "dkkt_plugin.augment": ["DSA", "DSAConfig", "DSADraw"],
    "dkkt_plugin.data": ["ImageDataset", "load_fashion_mnist", "load_cifar10", "PracticalSubset",
                         "write_cifar10"],
    "dkkt_plugin.cli": ["main"],
    "dkkt_plugin.methods": ["DistillConfig", "DistillData", "Method", "DM", "DMStar", "DC", "DSAMethod",
                            "DSV", "DMDKKT", "GMConfig", "DKKTMethodConfig", "DSVMethodConfig"],
    "dkkt_plugin.distill": ["run_distillation", "build_config", "load_distill_data", "load_synthetic",
                            "save_synthetic", "method_class"],
    "dkkt_plugin.evaluate": ["evaluate_synthetic", "get_protocol", "PROTOCOLS", "EvalProtocol", "EvalResult"],
    "dkkt_plugin.training": ["TrainConfig", "train_classifier", "accuracy"],
    "dkkt_plugin.pretrain": ["PretrainConfig", "pretrain", "save_edge_model", "load_edge_model"],
    "dkkt_plugin.viz": ["image_grid", "save_png", "save_image_grid"],
}


@pytest.mark.parametrize("module,names", sorted(PUBLIC.items()))
def test_public_names_exist(module, names):
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{module} lost public names {missing}"
