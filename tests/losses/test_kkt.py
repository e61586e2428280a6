"""KKT helpers and the support-vector property on a model trained with weight decay."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dkkt_plugin.errors import ConfigError
from dkkt_plugin.losses.kkt import fit_multipliers_nnls, margins, per_sample_grads, select_parameters
from dkkt_plugin.nets import ConvNet


def test_select_parameters():
    net = ConvNet(1, 3, 8, width=3, depth=2)
    assert select_parameters(net, "weights") == ["features.0.weight", "features.4.weight", "classifier.weight"]
    assert select_parameters(net, "classifier") == ["classifier.weight", "classifier.bias"]
    assert len(select_parameters(net, "all")) == len(list(net.parameters()))
    assert select_parameters(net, param_filter=lambda n, p: n.endswith("bias"))[-1] == "classifier.bias"
    with pytest.raises(ConfigError):
        select_parameters(net, "convs")


def test_per_sample_grads_match_loop():
    net = ConvNet(1, 3, 8, width=3, depth=1)
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    names = ["features.0.weight", "classifier.weight"]
    grads = per_sample_grads(net, names, x, y, chunk_size=2)
    params = dict(net.named_parameters())
    for i in range(5):
        gi = torch.autograd.grad(F.cross_entropy(net(x[i:i + 1]), y[i:i + 1]), [params[n] for n in names])
        for a, b in zip(grads, gi):
            assert torch.allclose(a[i], b, atol=1e-6)


def test_nnls_recovers_known_combination():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(4, 20, generator=g)]
    lam_true = torch.tensor([0.0, 2.0, 0.5, 0.0])
    theta = [-(lam_true[:, None] * grads[0]).sum(0)]
    lam, rel = fit_multipliers_nnls(theta, grads)
    assert torch.allclose(lam.float(), lam_true, atol=1e-5) and rel < 1e-4


def _two_blobs(n=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) * 0.8 + (y[:, None] * 2 - 1) * torch.tensor([1.5, 0.0])
    return x, y


def test_support_vector_property_on_weight_decayed_model(fit_weight_decayed):
    """Fitted multipliers reproduce θ* and favour low-margin points (the papers' claim)."""
    x, y = _two_blobs()
    torch.manual_seed(0)
    wd = 1e-2
    model = fit_weight_decayed(nn.Sequential(nn.Linear(2, 2)), x, y, wd)
    names = [n for n, _ in model.named_parameters()]
    grads = per_sample_grads(model, names, x, y)
    theta = [p.detach() for p in model.parameters()]
    lam, rel = fit_multipliers_nnls(theta, grads)
    assert rel < 0.01  # a weight-decayed optimum is a KKT point: θ* = -(1/(wd N)) Σ g_i
    m = margins(model, x, y)
    low = m < m.median()
    assert lam[low].sum() > 0.8 * lam.sum()  # most weight on the low-margin half
    # The derivation's own solution, λ_i = 1/(wd N) for every training point, is exact too.
    uniform = [-(g.sum(0) / (wd * len(x))) for g in grads]
    for t, u in zip(theta, uniform):
        assert torch.allclose(t, u, atol=1e-4 * float(t.abs().max()))


def test_margins():
    net = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(3, 2))
    m = margins(net, torch.tensor([[2.0, 1.0]]), torch.tensor([0]))
    assert float(m) == pytest.approx(1.0)


def test_soft_relu_forward_and_its_differentiable_backward():
    from dkkt_plugin.losses.kkt import soft_relu, soft_relu_backward

    z = torch.linspace(-2, 2, 9, dtype=torch.float64, requires_grad=True)
    assert torch.equal(soft_relu(z, 5.0), z.clamp(min=0))
    (g,) = torch.autograd.grad(soft_relu(z, 5.0).sum(), z, create_graph=True)
    assert torch.allclose(g, torch.sigmoid(5.0 * z))

    def first_derivative(t):  # the surrogate derivative as a function: its own gradient must be exact
        (d,) = torch.autograd.grad(soft_relu(t, 5.0).sum(), t, create_graph=True)
        return d

    assert torch.autograd.gradcheck(first_derivative, (z.detach().clone().requires_grad_(),))
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
    with soft_relu_backward(net, 0.0):
        assert "forward" not in vars(net[1])  # slope 0: nothing changes
    with soft_relu_backward(net, 3.0):
        assert "forward" in vars(net[1])
    assert "forward" not in vars(net[1])
