"""dc_dkkt / dsa_dkkt (gradient matching + DKKT) and the grad balance in the DKKT methods: fraction 0
is DC / DSA bit for bit, each image update applies the rule (or the fixed weights), runs resume
exactly (running norms included), and `dkkt distill --method dsa_dkkt` runs and resumes."""
import json

import pytest
import torch

from dkkt_plugin import runtime
from dkkt_plugin.engine import build_config, load_synthetic, method_class
from dkkt_plugin.errors import ConfigError
from dkkt_plugin.methods import DistillData
from dkkt_plugin.nets import ConvNet

FAST = dict(net_width=4, net_depth=1, outer_loop=2, inner_loop=1, ipc=2, pipc=4, iterations=4)


def tiny_data(classes=3, per_class=4):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat(per_class)
    x = torch.randn(len(y), 1, 8, 8, generator=g) + y[:, None, None, None].float()
    return DistillData(x, y, classes, (0.0,), (1.0,), ConvNet(1, classes, 8, width=4, depth=1))


def make(name, overrides=None, **kw):
    cls = method_class(name)
    fields = set(cls.config_class.__dataclass_fields__)
    opts = {k: v for k, v in {**FAST, **kw}.items() if k in fields}
    with runtime.use(precision="fp32"):  # the DKKT term's feature pass in fp32
        return cls(build_config(name, overrides, **opts), tiny_data())


def capture_stats(method):
    """Record the BalanceStats of every image update of ``method``."""
    seen, apply = [], method.balancer.apply
    method.balancer.apply = lambda *a, **k: seen.append(apply(*a, **k)) or seen[-1]
    return seen


@pytest.mark.parametrize("name,host", [("dc_dkkt", "dc"), ("dsa_dkkt", "dsa")])
def test_fraction_zero_is_the_host_method_bit_for_bit(name, host):
    plain, ours = make(host), make(name, {"dkkt.balance_fraction": 0.0})
    rho = ours.dkkt.rho.detach().clone()
    for i in range(3):
        plain_log, log = plain.step(i), ours.step(i)
        assert log["gm"] == plain_log["loss"] and log["balance_scale"] == 0.0
    assert torch.equal(plain.images, ours.images)
    assert not torch.equal(rho, ours.dkkt.rho)  # the multipliers learn all the same
    balanced = make(name)  # the default fraction moves the images elsewhere
    for i in range(3):
        balanced.step(i)
    assert not torch.allclose(balanced.images, plain.images)


@pytest.mark.parametrize("mode", ["step", "running"])
@pytest.mark.parametrize("name", ["dc_dkkt", "dsa_dkkt"])
def test_each_image_update_applies_the_fraction(name, mode):
    m = make(name, {"dkkt.balance_fraction": 0.25, "dkkt.balance_mode": mode})
    stats = capture_stats(m)
    log = m.step(0)
    assert len(stats) == m.outer_loop == 2
    if mode == "step":
        assert all(s.ratio == pytest.approx(0.25, rel=1e-6) for s in stats)
    assert log["balance_scale"] == pytest.approx(sum(s.scale for s in stats) / 2)
    assert {"gm", "dkkt", "primal", "stationarity", "stat_ratio", "lambda_median"} <= set(log)


@pytest.mark.parametrize("balance", ["grad", "fixed"])
def test_the_update_is_the_documented_combination(balance):
    m = make("dc_dkkt", {"dkkt.balance": balance, "dkkt.balance_fraction": 0.3}, beta=0.5)
    assert m.image_lr == (0.1 if balance == "grad" else 0.2)  # fixed: DC's 0.1 / β
    x = m.images
    host = (x - 1).pow(2).sum()  # any host loss of the images
    g_h = torch.autograd.grad(host, x, retain_graph=True)[0]
    g_d, g_rho = torch.autograd.grad(m.dkkt(x, m.labels), [x, m.dkkt.rho])
    log = m.update_images(host, "test")
    if balance == "grad":
        s = 0.3 * float(g_h.norm() / g_d.norm())
        expected = g_h + s * g_d
    else:
        s, expected = 1.0, 0.5 * g_h + g_d
    assert log["balance_scale"] == pytest.approx(s, rel=1e-5)
    assert float((x.grad - expected).norm() / expected.norm()) < 1e-5
    assert torch.allclose(m.dkkt.rho.grad, g_rho)  # the multipliers: ∇L_DKKT, unscaled


@pytest.mark.parametrize("name,overrides", [("dsa_dkkt", {"dkkt.balance_mode": "running"}),
                                            ("dm_dkkt", {"dkkt.balance": "grad", "dkkt.balance_mode": "running"})])
def test_resume_is_exact_with_the_running_norms(name, overrides):
    full = make(name, overrides)
    for i in range(4):
        full.step(i)
    first = make(name, overrides)
    for i in range(2):
        first.step(i)
    state = first.state_dict()
    assert {"rho", "balance.host_norm", "balance.dkkt_norm", "balance.steps"} <= set(state["extra"])
    resumed = make(name, overrides, seed=5)
    resumed.load_state_dict(state)
    for i in range(2, 4):
        resumed.step(i)
    assert torch.equal(full.images, resumed.images) and torch.equal(full.dkkt.rho, resumed.dkkt.rho)
    assert int(resumed.balancer.steps) == int(full.balancer.steps) > 0


def test_dm_dkkt_takes_the_grad_balance():
    m = make("dm_dkkt", {"dkkt.balance": "grad", "dkkt.balance_fraction": 0.2})
    stats = capture_stats(m)
    log = m.step(0)
    assert stats[0].ratio == pytest.approx(0.2, rel=1e-6) and log["balance_scale"] == stats[0].scale
    assert "balance_scale" not in make("dm_dkkt").step(0)  # fixed weights by default


@pytest.mark.parametrize("name,settings", [("dsv", {}), ("dm_dkkt", {"beta": 0.0})])
def test_grad_balance_without_a_host_loss_is_refused(name, settings):
    with pytest.raises(ConfigError, match="host loss"):
        make(name, {"dkkt.balance": "grad"}, **settings)


def test_fixed_weights_need_a_positive_beta():
    with pytest.raises(ConfigError, match="beta > 0"):
        build_config("dc_dkkt", {"dkkt.balance": "fixed"}, beta=0.0)
    assert build_config("dc_dkkt", beta=0.0).beta == 0.0  # unused under the grad balance


def test_defaults():
    cfg = build_config("dsa_dkkt")
    assert (cfg.dkkt.balance, cfg.dkkt.balance_fraction, cfg.dkkt.balance_mode) == ("grad", 0.3, "step")
    assert build_config("dm_dkkt").dkkt.balance == "fixed" and build_config("dsv").dkkt.balance == "fixed"
    assert cfg.dkkt_config().alpha == 1.0 and build_config("dc_dkkt", {"dkkt.distance": "l1"}).dkkt_config().alpha == 0.1
    m = make("dsa_dkkt", ipc=10, outer_loop=0, inner_loop=0, init="noise")
    assert (m.outer_loop, m.inner_loop, m.image_lr) == (10, 50, 0.1)  # DC's loops and lr
    assert m.aug is not None and make("dc_dkkt").aug is None


def test_dkkt_distill_runs_dsa_dkkt_and_resumes_exactly(tiny_fashion_mnist, tmp_path, capsys):
    from dkkt_plugin.cli import main
    from dkkt_plugin.pretrain import save_edge_model

    edge = tmp_path / "edge.pt"
    save_edge_model(edge, ConvNet(1, 10, 28, width=4, depth=1), {"dataset": "fashion_mnist"})
    args = ["distill", "--method", "dsa_dkkt", "--dataset", "fashion_mnist", "--data-root", str(tiny_fashion_mnist),
            "--edge-model", str(edge), "--ipc", "1", "--pipc", "2", "--net-width", "4", "--net-depth", "1",
            "--device", "cpu", "--dkkt.balance-fraction", "0.2", "--dkkt.balance-mode", "running",
            "--precision", "fp32", "--checkpoint-every", "1"]
    assert main([*args, "--iterations", "4", "--out", str(tmp_path / "full")]) == 0, capsys.readouterr().err
    assert main([*args, "--iterations", "2", "--out", str(tmp_path / "part")]) == 0
    assert main([*args, "--iterations", "4", "--out", str(tmp_path / "part"), "--resume"]) == 0
    full, part = load_synthetic(tmp_path / "full"), load_synthetic(tmp_path / "part")
    assert torch.equal(full["images"], part["images"]) and torch.equal(full["multipliers"], part["multipliers"])
    rec = json.loads((tmp_path / "full" / "record.json").read_text())
    assert rec["resolved"]["dkkt"]["balance"] == "grad" and rec["resolved"]["lr_img"] == 0.1
    assert rec["resolved"]["dkkt"]["balance_fraction"] == 0.2 and "balance_scale" in rec["history"][-1]
