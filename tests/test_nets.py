"""The DatasetCondensation ConvNet."""
import pytest
import torch

from dkkt_plugin.errors import ConfigError
from dkkt_plugin.nets import ConvNet


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (1, 32), (3, 28)])
@pytest.mark.parametrize("norm", ["instancenorm", "batchnorm", "none"])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_shapes(channels, size, norm, pooling):
    net = ConvNet(channels, 10, size, width=8, norm=norm, pooling=pooling)
    x = torch.randn(3, channels, size, size)
    assert net(x).shape == (3, 10)
    side = 4 if (channels == 1 and size == 28) or size == 32 else 3
    assert net.embed(x).shape == (3, 8 * side * side) == (3, net.feature_dim)


def test_reference_feature_dim():
    assert ConvNet(3, 10, 32).feature_dim == 2048
    assert ConvNet(1, 10, 28).feature_dim == 2048  # 28 px padded by 3 in the first conv


def test_init_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = ConvNet(1, 10, 28, width=8, generator=torch.Generator().manual_seed(3))
    b = ConvNet(1, 10, 28, width=8, generator=torch.Generator().manual_seed(3))
    c = ConvNet(1, 10, 28, width=8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(state, torch.get_rng_state())
    for (n, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q)
        if n.endswith("weight") and p.ndim > 1:
            assert not torch.equal(p, r)


def test_default_init_scale():
    net = ConvNet(3, 10, 32)
    w = net.features[0].weight
    bound = 1 / (3 * 9) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.all(net.features[1].weight == 1) and torch.all(net.features[1].bias == 0)


def test_instancenorm_is_per_sample():
    net = ConvNet(1, 10, 28, width=8)
    x = torch.randn(6, 1, 28, 28)
    assert torch.allclose(net(x)[:2], net(x[:2]), atol=1e-6)
    assert net.per_sample and not ConvNet(1, 10, 28, width=8, norm="batchnorm").per_sample


def test_bad_config():
    with pytest.raises(ConfigError, match="norm"):
        ConvNet(norm="layernorm")
    with pytest.raises(ConfigError, match="too small"):
        ConvNet(3, 10, 4, depth=3)
