"""Entry-point discovery, lazy loading and plugin errors."""
import os
import sys

import pytest

from dkkt_plugin import registry
from dkkt_plugin.errors import DkktError, PluginError, UnknownComponentError

BUILTIN = {
    "losses": {"dkkt", "dm", "gradient_matching"},
    "initializers": {"noise", "real", "dsv"},
    "datasets": {"cifar10", "fashion_mnist"},
    "subsets": {"practical_subset"},
    "augmentations": {"dsa"},
    "methods": {"dm", "dm_star", "dc", "dsa", "dsv", "dm_dkkt"},
    "models": {"convnet", "convnet_bn", "convnet_nn", "convnet_d1", "convnet_d2", "convnet_d3", "convnet_d4", "mlp",
               "lenet", "alexnet", "alexnet_bn", "vgg11", "vgg11_bn", "resnet18", "resnet18_bn"},
}
EXAMPLE_PLUGIN = os.environ.get("DKKT_EXPECT_EXAMPLE_PLUGIN") == "1"


@pytest.mark.parametrize("group", sorted(BUILTIN))
def test_builtin_components_are_discovered(group):
    found = registry.discover(group)
    assert BUILTIN[group] <= set(found)
    for name in BUILTIN[group]:
        assert found[name].distribution == "dkkt-plugin"


@pytest.mark.parametrize("group,name", [(g, n) for g in sorted(BUILTIN) for n in sorted(BUILTIN[g])])
def test_every_builtin_component_loads_its_declared_target(group, name):
    import importlib

    module, _, attr = registry.get(group, name).value.partition(":")
    assert registry.load(group, name) is getattr(importlib.import_module(module), attr)


def test_builtin_table_is_every_group():
    assert sorted(BUILTIN) == sorted(registry.GROUPS)


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownComponentError) as err:
        registry.load("losses", "nope")
    assert "dkkt" in str(err.value) and "gradient_matching" in str(err.value)
    assert isinstance(err.value, DkktError) and isinstance(err.value, LookupError)


def test_unknown_group():
    with pytest.raises(UnknownComponentError, match="known groups"):
        registry.names("optimizers")


def test_third_party_plugin_from_metadata(fake_distribution):
    comp = registry.get("initializers", "fine")
    assert comp.distribution == "broken-dkkt-thing"
    assert registry.create("initializers", "fine") == "fine"


def test_broken_plugin_error_names_plugin_and_distribution(fake_distribution):
    with pytest.raises(PluginError) as err:
        registry.load("losses", "exploding")
    msg = str(err.value)
    assert "exploding" in msg and "broken-dkkt-thing" in msg and "boom at import" in msg
    assert isinstance(err.value.__cause__, RuntimeError)
    # the others still load
    assert registry.load("losses", "dkkt").__name__ == "DKKTLoss"


def test_plugin_cannot_shadow_builtin_and_is_warned_about(fake_distribution):
    with pytest.warns(UserWarning, match="'broken-dkkt-thing' declares 'dsa'.*is ignored"):
        assert registry.get("augmentations", "dsa").distribution == "dkkt-plugin"


def test_loading_checks_the_group_protocol(fake_distribution):
    with pytest.raises(PluginError, match="'not_a_method'.*broken-dkkt-thing.*not a subclass of "
                                          "dkkt_plugin.methods.Method"):
        registry.load("methods", "not_a_method")
    problem = registry.PROTOCOLS["initializers"](lambda ipc: None)  # no num_classes= keyword
    assert problem and "cannot be called as the group requires" in problem


@pytest.mark.parametrize("group", registry.GROUPS)
def test_every_builtin_fits_its_group_protocol(group):
    for name, comp in registry.discover(group).items():
        if comp.distribution == "dkkt-plugin":
            assert registry.PROTOCOLS[group](comp.load()) is None, (group, name)


def test_autoload_switch_hides_third_party(fake_distribution, monkeypatch):
    monkeypatch.setenv(registry.AUTOLOAD_ENV, "1")
    assert "fine" not in registry.names("initializers")
    assert set(registry.names("initializers")) == BUILTIN["initializers"]
    monkeypatch.setenv(registry.AUTOLOAD_ENV, "0")
    assert "fine" in registry.names("initializers")


def test_listing_imports_nothing(fake_distribution):
    registry.names("losses")
    assert "broken_dkkt_thing_mod" not in sys.modules


@pytest.mark.skipif(not EXAMPLE_PLUGIN, reason="example plugin is installed only in the tox env")
def test_installed_example_plugin_is_usable():
    import torch

    comp = registry.get("initializers", "constant")
    assert comp.distribution == "dkkt-example-plugin"
    images, labels = comp.load()(2, num_classes=3, image_shape=(1, 4, 4))
    assert images.shape == (6, 1, 4, 4) and torch.all(images == 0.5)
    loss = registry.create("losses", "mean_embedding_l1")
    assert float(loss(torch.ones(2, 1), None, torch.zeros(1, 1), None)) == 1.0


@pytest.mark.skipif(not EXAMPLE_PLUGIN, reason="example plugin is installed only in the tox env")
@pytest.mark.parametrize("method", ["dm", "dm_dkkt", "dsa"])
def test_third_party_augmentation_and_loss_are_used_by_methods(method):
    """Flags select the example plugin's augmentation (and, for DM, its loss) in a real run."""
    import torch
    from dkkt_example_plugin import BrightnessJitter

    from dkkt_plugin.engine import build_config, method_class
    from dkkt_plugin.methods import DistillData
    from dkkt_plugin.nets import ConvNet

    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(4)
    data = DistillData(torch.randn(12, 1, 8, 8, generator=g), y, 3, (0.0,), (1.0,), ConvNet(1, 3, 8, width=4, depth=1))
    overrides = {"augment.name": "brightness_jitter", "net_width": 4, "net_depth": 1, "ipc": 1, "pipc": 4}
    if method == "dm":
        overrides["dm_loss"] = "mean_embedding_l1"
    if method == "dsa":
        overrides.update(outer_loop=2, inner_loop=1)
    m = method_class(method)(build_config(method, overrides), data)
    if method == "dm":
        assert type(m.dm).__name__ == "MeanL1Loss"
    before, calls = m.images.detach().clone(), BrightnessJitter.calls
    m.step(0)
    assert BrightnessJitter.calls > calls and not torch.equal(before, m.images.detach())
