"""The support-vector measurements of benchmarks/support_vectors.py on small exact problems."""
import torch
from torch import nn

from benchmarks.support_vectors import gradient_norms, low_margin_share, uniform_residual


def test_uniform_residual_is_small_at_a_weight_decayed_optimum(fit_weight_decayed):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 2, 2, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    torch.manual_seed(0)
    wd = 0.05
    model = fit_weight_decayed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), x, y, wd)
    names = [n for n, _ in model.named_parameters()]
    assert uniform_residual(model, names, x, y, wd, batch=16) < 1e-3
    with torch.no_grad():
        model[1].weight.mul_(2)  # away from the optimum the residual is large
    assert uniform_residual(model, names, x, y, wd) > 0.1


def test_exact_solution_weight_sits_on_low_margin_points(fit_weight_decayed):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 1, 2, 2, generator=g)
    y = (x.flatten(1) @ torch.tensor([1.0, -1.0, 0.5, 2.0]) > 0).long()
    torch.manual_seed(0)
    model = fit_weight_decayed(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), x, y, 0.01)
    names = [n for n, _ in model.named_parameters()]
    norms, margin = gradient_norms(model, names, x, y, batch=64)
    assert norms.shape == margin.shape == (200,)
    # the uniform multipliers are exact (residual ~0), yet their contributions λ‖g_i‖ concentrate
    # on the low-margin points, as support vectors do
    assert uniform_residual(model, names, x, y, 0.01) < 1e-3
    assert low_margin_share(norms, margin, 0.5) > 0.8
    assert low_margin_share(torch.ones(200), margin, 0.5) == 0.5
