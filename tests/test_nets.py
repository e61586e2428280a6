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


def test_fast_pool_matches_avg_pool_with_gradients():
    from dkkt_plugin.nets import AvgPool2x2

    x = torch.randn(2, 3, 8, 6, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(AvgPool2x2()(x), torch.nn.functional.avg_pool2d(x, 2))
    assert torch.autograd.gradcheck(AvgPool2x2(), (x,))
    assert torch.autograd.gradgradcheck(AvgPool2x2(), (x,))  # the DKKT term's double backward
    odd = torch.randn(2, 3, 7, 7)  # odd sizes go through nn.AvgPool2d (floor)
    assert torch.equal(AvgPool2x2()(odd), torch.nn.functional.avg_pool2d(odd, 2))
    grads = torch.func.vmap(torch.func.grad(lambda xi: AvgPool2x2()(xi[None]).pow(2).sum()))(x.detach())
    x2 = x.detach().requires_grad_()
    AvgPool2x2()(x2).pow(2).sum().backward()
    assert torch.allclose(grads, x2.grad)


def test_first_conv_in_fp32_under_autocast_with_grad():
    net = ConvNet(1, 10, 28, width=8)
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    seen = []
    hook = net.features[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        with torch.no_grad():
            net(x)
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    out.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
