"""The grad balance rule: ‖s·∇L_DKKT‖ = fraction·‖∇L_host‖ on DM, gradient matching and a
third-party loss; fraction 0 is the host's gradient bit for bit; no gradient through s; the
accumulated gradient is the derivative of L_host + s·L_DKKT (float64 finite differences)."""
import pytest
import torch
import torch.nn.functional as F

from dkkt_plugin import runtime
from dkkt_plugin.errors import ConfigError, NonFiniteLossError
from dkkt_plugin.losses import DKKTConfig, DKKTLoss, DMLoss, FixedScale, GradBalance, GradientMatchingLoss
from dkkt_plugin.nets import ConvNet

N, K = 6, 3  # synthetic images, classes


def setup(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    edge = ConvNet(1, K, 8, width=4, depth=1, generator=g).to(dtype)
    images = torch.randn(N, 1, 8, 8, generator=g, dtype=dtype).requires_grad_(True)
    labels = torch.arange(K).repeat_interleave(N // K)
    real = torch.randn(12, 1, 8, 8, generator=g, dtype=dtype)
    real_labels = torch.arange(K).repeat(4)
    return edge, images, labels, real, real_labels


def host_losses(real, real_labels):
    """name -> callable(images, labels) giving the same host loss at every call (fixed draws)."""
    target = real[:N].clone()

    def dm(x, y):
        net = ConvNet(1, K, 8, width=4, depth=1, generator=torch.Generator().manual_seed(1)).to(x.dtype)
        with runtime.use(precision="fp32", backend="torch"):
            loss = DMLoss(net, reinit=False)
        return loss(real, real_labels, x, y)

    def gm(x, y):
        net = ConvNet(1, K, 8, width=4, depth=1, generator=torch.Generator().manual_seed(2)).to(x.dtype)
        return GradientMatchingLoss()(net, real, real_labels, x, y)

    def mse(x, y):  # a third-party host loss: pixels toward a target image set
        return F.mse_loss(x, target)

    return {"dm": dm, "gradient_matching": gm, "mse": mse}


HOSTS = ["dm", "gradient_matching", "mse"]


def rel(a, b):
    return float((a - b).norm() / b.norm())


def dkkt_loss(edge, **kw):
    with runtime.use(precision="fp32", backend="torch"):
        return DKKTLoss(edge, N, **kw)


@pytest.mark.parametrize("mode", ["step", "running"])
@pytest.mark.parametrize("host", HOSTS)
def test_the_dkkt_gradient_is_the_fraction_of_the_hosts(host, mode):
    edge, x, y, real, real_labels = setup()
    make = host_losses(real, real_labels)[host]
    dkkt = dkkt_loss(edge)
    g_host = torch.autograd.grad(make(x, y), x)[0]
    g_dkkt = torch.autograd.grad(dkkt(x, y), x)[0]
    ratio_at_weight_1 = float(g_dkkt.norm() / g_host.norm())
    balance = GradBalance(0.3, mode=mode)
    stats = balance.backward(make(x, y), dkkt(x, y), x, dkkt.parameters())
    applied = x.grad - g_host  # s·g_d
    assert float(applied.norm() / g_host.norm()) == pytest.approx(0.3, rel=1e-4)
    assert stats.ratio == pytest.approx(0.3, rel=1e-6)
    assert torch.allclose(applied, stats.scale * g_dkkt, rtol=1e-4, atol=1e-9)
    assert stats.scale == pytest.approx(0.3 / ratio_at_weight_1, rel=1e-4)  # not the fixed weight 1


@pytest.mark.parametrize("host", HOSTS)
def test_fraction_zero_is_the_host_gradient_bit_for_bit(host):
    edge, x, y, real, real_labels = setup()
    make = host_losses(real, real_labels)[host]
    make(x, y).backward()
    plain = x.grad.clone()
    x.grad = None
    dkkt = dkkt_loss(edge, balance="grad", balance_fraction=0.0)
    terms, stats = dkkt.backward_with(make(x, y), x, y)
    assert torch.equal(x.grad, plain) and stats.scale == 0.0
    assert dkkt.rho.grad is not None and float(dkkt.rho.grad.abs().sum()) > 0  # the multipliers still learn


def test_no_gradient_flows_through_the_scale():
    edge, x, y, real, real_labels = setup()
    make = host_losses(real, real_labels)["gradient_matching"]
    dkkt = dkkt_loss(edge)
    stats = GradBalance(0.5).backward(make(x, y), dkkt(x, y), x)
    assert type(stats.scale) is float  # a plain number: nothing to differentiate
    constant = torch.autograd.grad(make(x, y) + stats.scale * dkkt(x, y), x)[0]
    assert rel(x.grad, constant) < 1e-5
    # had the gradient flowed through s = f·‖g_h‖/‖g_d‖, the images would get another gradient
    host, term = make(x, y), dkkt(x, y)
    g_h = torch.autograd.grad(host, x, create_graph=True)[0]
    g_d = torch.autograd.grad(term, x, create_graph=True)[0]
    s = 0.5 * g_h.norm() / g_d.norm()
    through = torch.autograd.grad(host + s * term, x)[0]
    assert rel(x.grad, through) > 1e-2


def test_the_combined_gradient_is_the_derivative_of_the_weighted_sum_in_float64():
    edge, x, y, real, real_labels = setup(torch.float64)
    make = host_losses(real, real_labels)["gradient_matching"]
    dkkt = dkkt_loss(edge, balance="grad", balance_fraction=0.4)
    _, stats = dkkt.backward_with(make(x, y), x, y)
    s = stats.scale

    def objective(images):  # (gradient matching differentiates its network inside: no no_grad here)
        return float((make(images, y) + s * dkkt(images, y)).detach())

    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        eps = 1e-6
        numeric = (objective(x.detach() + eps * v) - objective(x.detach() - eps * v)) / (2 * eps)
        assert float((x.grad * v).sum()) == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    # and the weighted sum itself passes torch's gradcheck (s frozen)
    xs = x.detach()[:3].clone().requires_grad_(True)
    with runtime.use(precision="fp32", backend="torch"):
        dkkt3 = DKKTLoss(edge, 3)
    ys = y[:3]
    assert torch.autograd.gradcheck(lambda im: F.mse_loss(im, real[:3]) + s * dkkt3(im, ys), (xs,),
                                    eps=1e-6, atol=1e-6, rtol=1e-4)


def test_running_mode_averages_the_norms_and_resumes_from_its_state():
    rule = GradBalance(0.2, mode="running", momentum=0.5)
    assert rule.scale(4.0, 2.0) == pytest.approx(0.2 * 4 / 2)  # the first step sets the averages
    assert rule.scale(8.0, 1.0) == pytest.approx(0.2 * (0.5 * 4 + 0.5 * 8) / (0.5 * 2 + 0.5 * 1))
    saved = {k: v.clone() for k, v in rule.state_dict().items()}
    assert set(saved) == {"host_norm", "dkkt_norm", "steps"} and int(saved["steps"]) == 2
    following = rule.scale(1.0, 3.0)
    fresh = GradBalance(0.2, mode="running", momentum=0.5)
    fresh.load_state_dict(saved)
    assert fresh.scale(1.0, 3.0) == following
    assert GradBalance(0.2).scale(8.0, 1.0) == pytest.approx(1.6)  # step mode: this step only


def test_a_zero_dkkt_gradient_gives_scale_zero_and_non_finite_gradients_stop():
    x = torch.ones(3, requires_grad=True)
    stats = GradBalance(0.5).backward((2 * x).sum(), (0 * x).sum(), x)
    assert stats.scale == 0.0 and x.grad.tolist() == [2.0, 2.0, 2.0]
    x.grad = None
    with pytest.raises(NonFiniteLossError, match="not finite"):
        GradBalance(0.5).backward((2 * x).sum(), (x * float("inf")).sum(), x)
    assert x.grad is None  # nothing accumulated


def test_the_multipliers_gradient_is_unscaled_unless_asked():
    edge, x, y, real, real_labels = setup()
    make = host_losses(real, real_labels)["mse"]
    dkkt = dkkt_loss(edge)
    g_rho = torch.autograd.grad(dkkt(x, y), dkkt.rho)[0]
    GradBalance(0.3).backward(make(x, y), dkkt(x, y), x, dkkt.parameters())
    assert torch.allclose(dkkt.rho.grad, g_rho)
    dkkt.rho.grad = None
    stats = GradBalance(0.3, scale_params=True).backward(make(x, y), dkkt(x, y), x.detach().requires_grad_(),
                                                          dkkt.parameters())
    assert torch.allclose(dkkt.rho.grad, stats.scale * g_rho, rtol=1e-5)


def test_fixed_balance_of_backward_with_is_the_plain_sum():
    edge, x, y, real, real_labels = setup()
    make = host_losses(real, real_labels)["dm"]
    dkkt = dkkt_loss(edge)  # balance "fixed" by default: no rule, rho alone in the state
    assert dkkt.balancer is None and list(dkkt.state_dict()) == ["rho"]
    expected = torch.autograd.grad(make(x, y) + dkkt(x, y), [x, dkkt.rho])
    _, stats = dkkt.backward_with(make(x, y), x, y)
    assert stats.scale == 1.0
    assert torch.allclose(x.grad, expected[0], rtol=1e-5) and torch.allclose(dkkt.rho.grad, expected[1], rtol=1e-5)
    assert FixedScale(2.0).scale(1.0, 5.0) == 2.0


def test_the_balanced_loss_keeps_its_running_norms_in_its_state():
    edge, *_ = setup()
    dkkt = dkkt_loss(edge, balance="grad", balance_mode="running", balance_momentum=0.8)
    assert list(dkkt.state_dict()) == ["rho", "balancer.host_norm", "balancer.dkkt_norm", "balancer.steps"]
    assert [n for n, _ in dkkt.named_parameters()] == ["rho"]  # the optimiser still sees λ only
    assert (dkkt.balancer.fraction, dkkt.balancer.mode, dkkt.balancer.momentum) == (0.3, "running", 0.8)  # the default fraction


def test_shared_graphs_and_slices_are_reported():
    x = torch.ones(3, requires_grad=True)
    shared = (x * 2).exp()  # feeds both losses
    with pytest.raises(ConfigError, match="shared_graph=True"):
        GradBalance(0.5).backward(shared.sum(), shared.pow(2).sum(), x)
    shared = (x * 2).exp()
    GradBalance(0.5).backward(shared.sum(), shared.pow(2).sum(), x, shared_graph=True)
    assert torch.isfinite(x.grad).all()
    edge, images, labels, *_ = setup()
    dkkt = dkkt_loss(edge, balance="grad")
    with pytest.raises(ConfigError, match="leaf tensor"):
        dkkt.backward_with(images[:N].sum(), images * 1, labels)


@pytest.mark.parametrize("settings,match", [
    (dict(balance="weights"), "balance"), (dict(balance_fraction=-0.1), "balance_fraction"),
    (dict(balance_fraction=float("nan")), "balance_fraction"), (dict(balance_momentum=1.0), "balance_momentum"),
    (dict(balance_mode="ema"), "balance_mode"),
])
def test_bad_balance_settings_are_one_clear_error(settings, match):
    with pytest.raises(ConfigError, match=match):
        DKKTConfig(**settings)


@pytest.mark.parametrize("settings,match", [
    (dict(fraction=-1.0), "fraction"), (dict(fraction=float("inf")), "fraction"), (dict(mode="ema"), "mode"),
    (dict(momentum=-0.1), "momentum"),
])
def test_bad_rule_arguments_are_one_clear_error(settings, match):
    with pytest.raises(ConfigError, match=match):
        GradBalance(**settings)
