"""Gradient matching (DC / DSA): the reference distance and the classwise loss."""
import pytest
import torch

from dkkt_plugin.augment import DSA
from dkkt_plugin.errors import ConfigError
from dkkt_plugin.losses import GradientMatchingLoss, gradient_distance
from dkkt_plugin.nets import ConvNet


def test_ours_distance_rowwise_cosine_and_1d_ignored():
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, generator=g), torch.randn(5, 6, generator=g)]
    b = [torch.randn_like(t) for t in a]
    expect = 0.0
    for x, y in ((a[0], b[0]), (a[2], b[2])):
        x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
        expect += (1 - torch.nn.functional.cosine_similarity(x, y, dim=1, eps=0)).sum()
    assert torch.allclose(gradient_distance(a, b), expect, atol=1e-4)
    assert float(gradient_distance([t.clone() for t in a], a)) == pytest.approx(0.0, abs=1e-5)
    assert float(gradient_distance([a[1]], [b[1]])) == 0.0  # biases contribute nothing


def test_mse_and_cos():
    a, b = [torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 2.0])]
    assert float(gradient_distance(a, b, "mse")) == pytest.approx(5.0)
    assert float(gradient_distance(a, b, "cos")) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ConfigError):
        gradient_distance(a, b, "l7")


@pytest.mark.parametrize("augment", [None, "dsa"])
def test_classwise_loss_and_gradcheck(augment):
    net = ConvNet(1, 2, 8, width=2, depth=1).double()
    g = torch.Generator().manual_seed(0)
    real = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    syn = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    yr, ys = torch.tensor([0, 1] * 3), torch.tensor([0, 1])
    dsa = DSA("color_flip_scale", mode="all", seed=0) if augment else None
    gm = GradientMatchingLoss("ours", augment=dsa)
    state = dsa.generator.get_state() if dsa else None

    def f(s):
        if dsa:
            dsa.generator.set_state(state)
        return gm(net, real, yr, s, ys)

    loss = f(syn)
    assert loss.ndim == 0 and float(loss.detach()) > 0
    assert torch.autograd.gradcheck(f, (syn,), eps=1e-6, atol=1e-5, fast_mode=True)
    assert all(p.grad is None for p in net.parameters())  # the network is not trained here


def test_identical_sets_match_perfectly():
    net = ConvNet(1, 2, 8, width=2, depth=1)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    assert float(GradientMatchingLoss()(net, x, y, x.clone(), y)) == pytest.approx(0.0, abs=1e-4)
