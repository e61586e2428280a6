"""The DKKT loss: parts, one-backward stationarity, floor, multipliers, gradients, errors, and the
speed settings it reads when built (the bf16 feature pass, the fused edge-model pass)."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from dkkt_plugin import runtime
from dkkt_plugin.errors import ConfigError
from dkkt_plugin.losses import DKKTConfig, DKKTLoss
from dkkt_plugin.losses.kkt import per_sample_grads
from dkkt_plugin.nets import ConvNet


def make(*args, precision=None, backend=None, **kwargs) -> DKKTLoss:
    """A DKKTLoss built under the given speed settings (None: the ones in force)."""
    with runtime.use(precision=precision, backend=backend):
        return DKKTLoss(*args, **kwargs)


def tiny_net(dtype=torch.float32, classes=3):
    return ConvNet(1, classes, 8, width=3, depth=1, generator=torch.Generator().manual_seed(0)).to(dtype)


def data(n=6, classes=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), torch.arange(n) % classes


@pytest.mark.parametrize("distance", ["l1", "l2", "cos"])
@pytest.mark.parametrize("params", ["all", "weights", "classifier"])
@pytest.mark.parametrize("scale", ["none", "floor"])
@pytest.mark.parametrize("stationarity", ["ce", "margin"])
def test_stationarity_equals_per_sample_formulation(distance, params, scale, stationarity):
    net = tiny_net()
    x, y = data()
    loss = make(net, 6, DKKTConfig(distance=distance, params=params, scale=scale, stationarity=stationarity),
                precision="fp32")  # exact; bf16: test_bf16_feature_pass_...
    loss.set_multipliers(torch.linspace(0.5, 3.0, 6))
    got = loss.terms(x, y).stationarity
    grads = per_sample_grads(net, loss.param_names, x, y, loss=stationarity)
    theta = dict(net.named_parameters())
    lam = loss.multipliers.detach()
    parts = []
    gsums = [torch.einsum("i,i...->...", lam, g) for g in grads]
    ref = float(torch.cat([gs.flatten() for gs in gsums]).norm()
                / torch.cat([theta[n].detach().flatten() for n in loss.param_names]).norm())
    for n, gsum in zip(loss.param_names, gsums):
        if distance == "cos":
            rows = theta[n].shape[0] if theta[n].ndim > 1 else 1
            a, b = theta[n].detach().reshape(rows, -1), -gsum.reshape(rows, -1)
            cos = (a * b).sum(1) / (a.norm(dim=1) * (b.norm(dim=1) + 1e-3 * ref * a.norm(dim=1)) + 1e-30)
            parts.append((1 - cos).mean())
            continue
        r = theta[n].detach() + gsum
        d = r.abs().mean() if distance == "l1" else r.pow(2).mean()
        f = theta[n].abs().mean() if distance == "l1" else theta[n].pow(2).mean()
        parts.append(d / f if scale == "floor" else d)
    # cos over "all" includes conv biases whose gradient is float32 round-off (damped, not zero)
    tol = 1e-3 if (distance, params) == ("cos", "all") else 1e-4
    assert torch.allclose(got, torch.stack(parts).mean(), rtol=tol, atol=1e-6)


def test_floor_is_value_at_zero_multipliers():
    loss = DKKTLoss(tiny_net(), 6, distance="l1", params="all")
    loss.set_multipliers(torch.zeros(6), min_value=1e-30)
    x, y = data()
    terms = loss.terms(x, y)
    assert terms.floor == pytest.approx(float(terms.stationarity.detach()), rel=1e-5)
    theta = [p for _, p in tiny_net().named_parameters()]
    assert terms.floor == pytest.approx(float(torch.stack([t.detach().abs().mean() for t in theta]).mean()), rel=1e-5)


def test_cos_distance_is_scale_free_with_floor_one():
    x, y = data()
    loss = DKKTLoss(tiny_net(), 6, distance="cos", params="all")
    assert loss.floor == 1.0
    loss.set_multipliers(torch.full((6,), 1e-3))
    small = float(loss.terms(x, y).stationarity.detach())
    loss.set_multipliers(torch.full((6,), 1e3))
    assert float(loss.terms(x, y).stationarity.detach()) == pytest.approx(small, rel=1e-4)
    assert 0.0 <= small <= 2.0


def test_primal_variants():
    net = tiny_net()
    x, y = data()
    logits = net(x)
    ce = F.cross_entropy(logits, y, reduction="none")
    wrong = logits.argmax(1) != y
    t_ce = make(net, 6, primal="ce", alpha=0, precision="fp32").terms(x, y)
    t_b = make(net, 6, primal="boundary", alpha=0, precision="fp32").terms(x, y)
    assert torch.allclose(t_ce.primal, ce.mean(), atol=1e-6)
    assert torch.allclose(t_b.primal, (ce * wrong).mean(), atol=1e-6)
    assert t_b.accuracy == pytest.approx(float((~wrong).float().mean()))
    # a correctly classified image contributes nothing to the boundary primal
    y_pred = logits.argmax(1)
    assert float(make(net, 6, primal="boundary", alpha=0, precision="fp32").terms(x, y_pred).primal.detach()) == 0.0


def test_total_combines_weighted_parts():
    x, y = data()
    cfg = DKKTConfig(alpha=0.3, tv_weight=0.2, norm_weight=0.1)
    t = DKKTLoss(tiny_net(), 6, cfg).terms(x, y)
    expect = t.primal + 0.3 * t.stationarity + 0.2 * t.tv + 0.1 * t.norm
    assert torch.allclose(t.total, expect)
    assert torch.allclose(t.norm, x.pow(2).mean())


def assert_gradcheck(loss, x, y, rho):
    """float64 gradcheck of the loss in the images and the multipliers' parameters ``rho``."""

    def f(images, r):
        return functional_call(loss, {"rho": r}, (images, y))

    # fast mode: checks random projections v·J·u of the Jacobian against finite differences
    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(), rho.requires_grad_()),
                                    eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


@pytest.mark.parametrize("distance,primal", [("l2", "ce"), ("l1", "boundary"), ("cos", "ce")])
@pytest.mark.parametrize("multiplier", ["log", "projected"])
def test_gradcheck_images_and_multipliers(distance, primal, multiplier):
    net = tiny_net(torch.float64)
    x, y = data(dtype=torch.float64)
    loss = DKKTLoss(net, 6, DKKTConfig(distance=distance, primal=primal, multiplier=multiplier,
                                       params="all", tv_weight=0.1, norm_weight=0.1))
    rho = loss.rho.detach().double().clone() + torch.linspace(0.1, 0.6, 6, dtype=torch.float64)
    assert_gradcheck(loss, x, y, rho)


def test_usable_as_a_term_in_another_loss():
    net = tiny_net()
    gen = torch.nn.Linear(4, 64)  # images produced by some other network
    images = gen(torch.randn(6, 4)).view(6, 1, 8, 8)
    dkkt = DKKTLoss(net, 6)
    other = images.pow(2).sum()
    total = other + 0.5 * dkkt(images, torch.arange(6) % 3)
    total.backward()
    assert gen.weight.grad is not None and dkkt.rho.grad is not None
    assert all(p.grad is None for p in net.parameters())  # the edge model stays untouched


def test_parameters_and_state_dict_hold_only_the_multipliers():
    net = tiny_net()
    dkkt = DKKTLoss(net, 6)
    assert [n for n, _ in dkkt.named_parameters()] == ["rho"]
    assert list(dkkt.state_dict()) == ["rho"]
    assert [n for n, _ in dkkt.named_modules()] == [""]  # the model is referenced, not a submodule
    assert dkkt.model is net
    dkkt.double()  # .to() and casts reach the multipliers only
    assert dkkt.rho.dtype == torch.float64 and all(p.dtype == torch.float32 for p in net.parameters())


def _snapshot(net):
    return ([(n, m.training) for n, m in net.named_modules()],
            [(n, p, p.requires_grad, p.detach().clone()) for n, p in net.named_parameters()],
            {n: b.clone() for n, b in net.named_buffers()})


@pytest.mark.parametrize("precision,params,norm", [("fp32", "all", "batchnorm"), ("fp32", "classifier", "instancenorm"),
                                                   ("bf16", "classifier", "batchnorm")])
def test_user_model_is_left_alone_and_trains_afterwards(precision, params, norm):
    net = ConvNet(1, 3, 8, width=3, depth=1, norm=norm, generator=torch.Generator().manual_seed(0))
    net.train()
    net.features[0].eval()  # a mixed mode must come back as it was
    before = _snapshot(net)
    x, y = data()
    dkkt = make(net, 6, precision=precision, params=params, soft_relu=5.0)
    dkkt.fit_multipliers(x, y)
    dkkt.train()
    images = x.clone().requires_grad_()
    dkkt(images, y).backward()
    dkkt.eval()
    assert images.grad is not None and dkkt.rho.grad is not None
    after = _snapshot(net)
    assert after[0] == before[0]  # every module's mode
    for (n, p, rg, value), (n2, p2, rg2, value2) in zip(before[1], after[1], strict=True):
        assert (n, rg) == (n2, rg2) and rg and p is p2 and torch.equal(value, value2)  # same tensors, flags, values
        assert p.grad is None  # no gradient reached the model
    assert all(torch.equal(b, after[2][n]) for n, b in before[2].items())  # BN statistics untouched
    # the user keeps training the model: its weights move and its loss goes down
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    moved = {n for n, p, _, value in before[1] if not torch.equal(value, p)}
    assert {"features.0.weight", "classifier.weight", "classifier.bias"} <= moved


def test_the_model_is_scored_in_eval_mode_whatever_its_own_mode():
    import copy

    net = ConvNet(1, 3, 8, width=3, depth=1, norm="batchnorm", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.features[1].running_mean.uniform_(-1, 1, generator=torch.Generator().manual_seed(2))
    frozen = copy.deepcopy(net).eval()
    x, y = data()
    a, b = DKKTLoss(net.train(), 6, params="all"), DKKTLoss(frozen, 6, params="all")
    ta, tb = a.terms(x, y), b.terms(x, y)
    assert torch.equal(ta.total, tb.total) and torch.equal(ta.stationarity, tb.stationarity)
    assert net.training and a.fit_multipliers(x, y) == b.fit_multipliers(x, y)
    assert torch.equal(a.multipliers, b.multipliers)


def test_state_dict_with_the_model_weights_loads_without_touching_the_model():
    net = tiny_net()
    x, y = data()
    other = ConvNet(1, 3, 8, width=3, depth=1, generator=torch.Generator().manual_seed(9))
    # a state dict as the loss wrote it while it registered the model: rho, then model.*
    old = {"rho": torch.linspace(-1.0, 1.0, 6), **{f"model.{k}": v for k, v in other.state_dict().items()}}
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    dkkt = DKKTLoss(net, 6)
    dkkt.load_state_dict(old)  # strict: the model's entries are dropped, not unexpected
    assert torch.equal(dkkt.rho.detach(), old["rho"])
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())  # the model is not overwritten
    holder = torch.nn.ModuleDict({"loss": DKKTLoss(net, 6)})  # nested: the prefix is honoured
    holder.load_state_dict({f"loss.{k}": v for k, v in old.items()})
    assert torch.equal(holder["loss"].rho.detach(), old["rho"])
    with pytest.raises(RuntimeError, match="Unexpected key"):
        dkkt.load_state_dict({**old, "other.weight": torch.zeros(1)})  # anything else still fails


def test_images_on_another_device_than_the_model_give_a_clear_error():
    x, y = data()
    with pytest.raises(ConfigError, match=r"model is on cpu.*model.to\('meta'\)"):
        DKKTLoss(tiny_net(), 6)(x.to("meta"), y)


def test_dsv_resumes_a_checkpoint_whose_multiplier_optimizer_lists_the_edge_model():
    """A method checkpoint written while the loss registered its model: the multipliers'
    optimiser's group lists the model's tensors after rho; the run resumes as if saved now."""
    from dkkt_plugin.engine import build_config
    from dkkt_plugin.methods import DistillData
    from dkkt_plugin.methods.dkkt import DSV

    def method():
        g = torch.Generator().manual_seed(0)
        y = torch.arange(3).repeat(4)
        data_ = DistillData(torch.randn(12, 1, 8, 8, generator=g), y, 3, (0.0,), (1.0,), tiny_net())
        return DSV(build_config("dsv", ipc=2, pipc=4, iterations=3), data_)  # fp32 (DSV.needs_fp32)

    a = method()
    a.step(0)
    state = a.state_dict()
    # the same optimiser state, written over [rho, *model.parameters()]
    old_opt = torch.optim.Adam([a.dkkt.rho, *a.dkkt.model.parameters()], lr=a.config.lr_multiplier)
    old_opt.load_state_dict({**state["optimizers"]["multiplier_optimizer"],
                             "param_groups": [{**state["optimizers"]["multiplier_optimizer"]["param_groups"][0],
                                               "params": list(range(1 + len(list(a.dkkt.model.parameters()))))}]})
    old = {**state, "optimizers": {**state["optimizers"], "multiplier_optimizer": old_opt.state_dict()}}
    assert len(old["optimizers"]["multiplier_optimizer"]["param_groups"][0]["params"]) > 1
    b = method()
    b.load_state_dict(old)
    a.step(1)
    b.step(1)
    assert torch.equal(a.images, b.images) and torch.equal(a.dkkt.rho, b.dkkt.rho)


def test_minibatch_indices_pick_multipliers():
    x, y = data()
    dkkt = DKKTLoss(tiny_net(), 6, primal="ce")
    dkkt.set_multipliers(torch.arange(1.0, 7.0))
    full = dkkt.terms(x[[1, 4]], y[[1, 4]], indices=torch.tensor([1, 4]))
    other = DKKTLoss(tiny_net(), 2, primal="ce")
    other.set_multipliers(torch.tensor([2.0, 5.0]))
    assert torch.allclose(full.total, other.terms(x[[1, 4]], y[[1, 4]]).total)


def test_projected_multipliers_stay_non_negative():
    dkkt = DKKTLoss(tiny_net(), 6, multiplier="projected")
    with torch.no_grad():
        dkkt.rho.copy_(torch.tensor([-1.0, 2, -3, 4, 0, 1]))
    expected = torch.tensor([0.0, 2, 0, 4, 0, 1])
    assert torch.equal(dkkt.multipliers.detach(), expected)  # negative parameters read as 0
    dkkt.project_()
    assert torch.equal(dkkt.rho.detach(), expected)  # and are projected there


def test_fit_multipliers_lowers_l2_stationarity():
    x, y = data(n=12)
    dkkt = DKKTLoss(tiny_net(), 12, distance="l2", params="weights")
    before = float(dkkt.terms(x, y).stationarity.detach())
    rel = dkkt.fit_multipliers(x, y)
    after = float(dkkt.terms(x, y).stationarity.detach())
    assert 0 <= rel <= 1
    assert after <= before + 1e-7
    assert after == pytest.approx(rel ** 2 * dkkt.floor, rel=1e-3)


def test_bad_inputs_give_clear_errors():
    dkkt = DKKTLoss(tiny_net(), 6)
    x, y = data()
    with pytest.raises(ConfigError, match="built for 6 images"):
        dkkt(x[:4], y[:4])
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        dkkt(x[0], y)
    with pytest.raises(ConfigError, match="labels"):
        dkkt(x, y[:3])
    with pytest.raises(ConfigError, match="distance"):
        DKKTConfig(distance="l3")
    with pytest.raises(ConfigError, match="num_images"):
        DKKTLoss(tiny_net(), 0)


@pytest.mark.parametrize("stationarity", ["ce", "margin"])
def test_gradcheck_margin_stationarity_and_multiplier_floor(stationarity):
    net = tiny_net(torch.float64)
    x, y = data(dtype=torch.float64)
    loss = DKKTLoss(net, 6, DKKTConfig(distance="l2", params="all", stationarity=stationarity,
                                       multiplier="projected", lambda_min=0.4))
    rho = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)  # some below lambda_min: the penalty is active
    assert_gradcheck(loss, x, y, rho)


def test_margin_stationarity_uses_the_margin_gradient():
    net = tiny_net()
    x, y = data()
    loss = make(net, 6, DKKTConfig(distance="l2", params="classifier", stationarity="margin"), precision="fp32")
    got = loss.terms(x, y).stationarity
    w = dict(net.named_parameters())
    names = loss.param_names
    params = {n: p.detach().clone().requires_grad_(n in names) for n, p in net.named_parameters()}
    logits = functional_call(net, params, (x,))
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    grads = torch.autograd.grad(-(true - other).sum(), [params[n] for n in names])  # λ = 1
    expect = torch.stack([(w[n].detach() + g).pow(2).mean() for n, g in zip(names, grads)]).mean()
    assert torch.allclose(got, expect, rtol=1e-5)


def test_lambda_min_penalty_value():
    loss = DKKTLoss(tiny_net(), 3, DKKTConfig(multiplier="projected", lambda_min=0.5, alpha=0.0))
    loss.set_multipliers(torch.tensor([0.1, 0.5, 2.0]))
    x, y = data(n=3)
    t = loss.terms(x, y)
    assert torch.allclose(t.total - t.primal, torch.tensor(5 * 0.4 ** 2), atol=1e-6)


def test_soft_relu_keeps_the_forward_and_predictions():
    net = ConvNet(1, 3, 8, width=4, depth=2, generator=torch.Generator().manual_seed(0))
    x, y = data()
    soft = DKKTLoss(net, 6, DKKTConfig(soft_relu=20.0, params="all"))
    hard = DKKTLoss(net, 6, DKKTConfig(params="all"))
    ts, th = soft.terms(x, y), hard.terms(x, y)
    assert ts.accuracy == th.accuracy and torch.equal(ts.primal, th.primal)  # same forward
    with torch.no_grad():
        before = net(x)
    assert torch.equal(net(x), before) and "forward" not in vars(net.features[2])  # ReLUs restored
    xs = x.clone().requires_grad_()
    xh = x.clone().requires_grad_()
    soft.terms(xs, y).stationarity.backward()
    hard.terms(xh, y).stationarity.backward()
    assert not torch.allclose(xs.grad, xh.grad)  # the double backward now sees sigmoid'(a z)


def test_chunked_forward_gives_the_same_loss_and_gradient(monkeypatch):
    from dkkt_plugin.losses import dkkt as dkkt_module
    from dkkt_plugin.losses import DKKTLoss
    from dkkt_plugin.nets import ConvNet

    # float64: conv biases in front of a norm have round-off gradients whose cos direction would
    # otherwise depend on the summation order
    net = ConvNet(1, 10, 28, width=8, generator=torch.Generator().manual_seed(0)).double()
    x = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(10)
    out = []
    for chunk in (3, 10 ** 6):
        monkeypatch.setattr(dkkt_module.cpu, "default_chunk_size", lambda device, c=chunk: c)
        images = x.clone().requires_grad_()
        loss = DKKTLoss(net, num_images=10, params="all", primal="ce")(images, y)
        out.append((loss.detach(), torch.autograd.grad(loss, images)[0]))
    (la, ga), (lb, gb) = out
    assert torch.allclose(la, lb, rtol=1e-10)
    assert float((ga - gb).norm()) <= 1e-8 * float(ga.norm())


@pytest.mark.parametrize("params", ["classifier", "all"])
def test_fused_edge_model_pass_gives_the_torch_loss_and_gradients(params, monkeypatch):
    # backend cpu (the default) where only classifier parameters are selected: the double backward
    # then never enters the blocks; with params="all" the blocks run torch's ops
    from dkkt_plugin.cpu import kernels

    calls = []
    monkeypatch.setattr(kernels.FirstBlock, "apply", lambda *a, _f=kernels.FirstBlock.apply: calls.append(1) or _f(*a))
    net = ConvNet(1, 10, 28, width=8, generator=torch.Generator().manual_seed(0))
    x = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.arange(10)
    report = make(net, 10, params=params, backend="cpu").speed_report(x)["dkkt.features"]
    assert report["backend"] == ("cpu" if params == "classifier" else "torch")
    assert bool(report["not_supported"]) == (params == "all")
    out = []
    for backend in ("cpu", "torch"):
        loss_fn = make(net, 10, params=params, primal="ce", precision="fp32", backend=backend)
        images = x.clone().requires_grad_()
        loss = loss_fn(images, y)
        gx, grho = torch.autograd.grad(loss, [images, loss_fn.rho])
        out.append((loss.detach(), gx, grho))
    assert len(calls) == (1 if params == "classifier" else 0)
    (la, ga, ra), (lb, gb, rb) = out
    assert torch.allclose(la, lb, rtol=1e-5)
    assert float((ga - gb).norm()) <= 1e-4 * float(gb.norm())
    assert float((ra - rb).norm()) <= 1e-4 * float(rb.norm())
    assert "embed" not in vars(net)  # the model is left as it was


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_bf16_feature_pass_is_close_to_fp32(backend):
    # bf16 autocast on the blocks only: the classifier, the losses and the stationarity gradient
    # stay fp32, so the loss is close and the images' and multipliers' gradients point the same way
    net = ConvNet(1, 10, 28, width=8, generator=torch.Generator().manual_seed(0))
    x = torch.randn(20, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.arange(20) % 10
    out = {}
    for precision in ("fp32", "bf16"):
        loss_fn = make(net, 20, precision=precision, backend=backend, primal="ce", alpha=1.0)
        loss_fn.set_multipliers(torch.linspace(0.5, 2.0, 20))
        assert loss_fn.uses_bf16(x) == (precision == "bf16")
        images = x.clone().requires_grad_()
        terms = loss_fn.terms(images, y)
        gx, grho = torch.autograd.grad(terms.total, [images, loss_fn.rho])
        assert gx.dtype == grho.dtype == torch.float32
        out[precision] = (terms.primal.detach(), terms.stationarity.detach(), gx, grho)
    (pa, sa, ga, ra), (pb, sb, gb, rb) = out["fp32"], out["bf16"]
    assert not torch.equal(ga, gb)  # bf16 did run
    assert torch.allclose(pb, pa, rtol=2e-2) and torch.allclose(sb, sa, rtol=2e-2)
    for a, b in ((ga, gb), (ra, rb)):
        assert float((a - b).norm()) <= 0.1 * float(a.norm())
        assert F.cosine_similarity(a.flatten(), b.flatten(), 0) > 0.99


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_and_where_bf16_applies(native, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: native)
    net = tiny_net()
    x, _ = data()
    auto = make(net, 6, precision="auto")
    with runtime.use(precision="fp32"):
        assert auto.uses_bf16(x) is native  # read when the loss was built
    assert make(net, 6, precision="bf16").uses_bf16(x) and not make(net, 6, precision="fp32").uses_bf16(x)
    # the bf16 path splits a ConvNet's blocks from its classifier: elsewhere the pass stays fp32
    assert not make(net, 6, params="all", precision="bf16").uses_bf16(x)  # the blocks' parameters need fp32
    assert not make(tiny_net(torch.float64), 6, precision="bf16").uses_bf16(x.double())
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    assert not make(flat, 6, precision="bf16").uses_bf16(x)
    assert make(flat, 6, precision="bf16").speed_report(x)["dkkt.features"] == {
        "precision": "fp32", "backend": "torch", "not_supported": ["Sequential is not a dkkt_plugin.nets.ConvNet and "
                                                                    "holds none"]}

    class Scaled(ConvNet):  # a forward that is not classifier(embed(x)): the split would be wrong
        def forward(self, x):
            return 2 * super().forward(x)

    assert not make(Scaled(1, 3, 8, width=3, depth=1), 6, precision="bf16").uses_bf16(x)
    with pytest.raises(TypeError, match="precision"):  # a speed setting is the process's, not the loss's
        DKKTConfig(precision="fp32")
    with pytest.raises(TypeError, match="precision"):
        DKKTLoss(net, 6, precision="fp32")
