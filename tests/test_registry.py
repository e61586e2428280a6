"""Entry-point discovery, lazy loading and plugin errors."""
import os
import sys

import pytest

from dkkt_plugin import registry
from dkkt_plugin.errors import DkktError, PluginError, UnknownComponentError

BUILTIN = {
    "losses": {"dkkt", "dm", "gradient_matching"},
    "initializers": {"noise", "real", "dsv"},
    "datasets": {"practical_subset", "cifar10", "fashion_mnist"},
    "augmentations": {"dsa"},
    "methods": {"dm", "dm_star", "dc", "dsa", "dsv", "dm_dkkt"},
}
EXAMPLE_PLUGIN = os.environ.get("DKKT_EXPECT_EXAMPLE_PLUGIN") == "1"


@pytest.mark.parametrize("group", sorted(BUILTIN))
def test_builtin_components_are_discovered(group):
    found = registry.discover(group)
    assert BUILTIN[group] <= set(found)
    for name in BUILTIN[group]:
        assert found[name].distribution == "dkkt-plugin"


@pytest.mark.parametrize("group,name", [(g, n) for g in sorted(BUILTIN) for n in sorted(BUILTIN[g])])
def test_every_builtin_component_loads(group, name):
    assert callable(registry.load(group, name))


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


def test_plugin_cannot_shadow_builtin(fake_distribution):
    assert registry.get("augmentations", "dsa").distribution == "dkkt-plugin"


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
