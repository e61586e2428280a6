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
}


@pytest.mark.parametrize("module,names", sorted(PUBLIC.items()))
def test_public_names_exist(module, names):
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{module} lost public names {missing}"
