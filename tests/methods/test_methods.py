"""Every registered method distils tiny generated data, logs, and round-trips its state."""
import dataclasses

import pytest
import torch

from dkkt_plugin import registry, runtime
from dkkt_plugin.engine import build_config, method_class
from dkkt_plugin.errors import ConfigError, NonFiniteLossError
from dkkt_plugin.methods import DistillData, Method
from dkkt_plugin.methods.dkkt import paper_alpha, paper_beta
from dkkt_plugin.methods.gm import default_loops
from dkkt_plugin.nets import ConvNet

BUILTIN = ["dc", "dc_dkkt", "dm", "dm_dkkt", "dm_star", "dsa", "dsa_dkkt", "dsv"]
METHODS = registry.names("methods")  # every registered method, third-party ones included
FAST = dict(net_width=4, net_depth=1, outer_loop=2, inner_loop=1)


def tiny_data(classes=3, per_class=4, edge=True):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat(per_class)
    x = torch.randn(len(y), 1, 8, 8, generator=g) + y[:, None, None, None].float()
    model = ConvNet(1, classes, 8, width=4, depth=1) if edge else None
    return DistillData(x, y, classes, (0.0,), (1.0,), model)


def config(name, **kw):
    cls = method_class(name).config_class
    fields = {f for f in cls.__dataclass_fields__}
    opts = {k: v for k, v in {"ipc": 2, "pipc": 4, "iterations": 3, **FAST, **kw}.items() if k in fields}
    return build_config(name, **opts)


@pytest.fixture(autouse=True)
def fp32():
    """Every pass in fp32: exact first-order descent on every CPU (bf16 is tested in
    tests/losses/test_dkkt.py and test_dm.py; the tests of the precision set their own)."""
    with runtime.use(precision="fp32"):
        yield


def test_all_builtin_methods_registered():
    assert set(BUILTIN) <= set(registry.names("methods"))


@pytest.mark.parametrize("name", METHODS)
def test_a_step_moves_the_images_toward_lower_loss(name):
    """Replaying one step's random draws at the updated images gives a lower loss than at the old
    ones: the step descends its own objective (small lr, so first order holds)."""
    cls = method_class(name)
    assert issubclass(cls, Method)
    settings = dict(lr_img=1e-3, momentum=0.0, outer_loop=1)  # DC/DSA: one matching step per iteration
    m = cls(config(name, **settings), tiny_data())
    before = m.state_dict()
    loss_before = m.step(0)["loss"]  # at the old images
    moved = m.images.detach().clone()
    assert not torch.equal(before["images"], moved)
    assert m.images.shape == (6, 1, 8, 8) and m.labels.tolist() == [0, 0, 1, 1, 2, 2]
    replay = cls(config(name, **settings), tiny_data())
    replay.load_state_dict({**before, "images": moved})  # same draws, multipliers, optimiser state
    assert replay.step(0)["loss"] < loss_before


@pytest.mark.parametrize("name", METHODS)
def test_state_round_trip_gives_identical_next_step(name):
    a = method_class(name)(config(name), tiny_data())
    a.step(0)
    state = a.state_dict()
    b = method_class(name)(config(name, seed=123), tiny_data())  # different start, then loaded
    b.load_state_dict(state)
    a.step(1)
    b.step(1)
    assert torch.equal(a.images, b.images)


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_synthetic_set(name):
    runs = []
    for _ in range(2):
        m = method_class(name)(config(name), tiny_data())
        m.step(0)
        m.step(1)
        runs.append(m.images.detach().clone())
    assert torch.equal(*runs)


def test_dkkt_methods_log_diagnostics_and_keep_multipliers():
    m = method_class("dm_dkkt")(config("dm_dkkt", refit_every=1), tiny_data())
    log = m.step(0)
    for key in ("primal", "stationarity", "floor", "stat_ratio", "edge_accuracy", "dm",
                "lambda_min", "lambda_median", "lambda_max", "lambda_zero"):
        assert key in log
    assert log["stat_ratio"] == pytest.approx(log["stationarity"] / log["floor"])
    assert m.extra_outputs()["multipliers"].shape == (6,)
    assert "dm" not in method_class("dsv")(config("dsv"), tiny_data()).step(0)


def test_paper_defaults():
    assert [paper_alpha(p) for p in (10, 50, "all")] == [0.1, 0.01, 0.001]
    assert [paper_beta(i) for i in (1, 3, 10, 50)] == [0.001, 0.001, 0.001, 0.01]
    assert default_loops(1) == (1, 1) and default_loops(10) == (10, 50) and default_loops(50) == (50, 10)
    cfg = build_config("dm_dkkt", {"dkkt.distance": "l1"}, ipc=50, pipc="all")
    assert cfg.dkkt_config().alpha == 0.001 and cfg.resolved_beta == 0.01
    with pytest.raises(ConfigError, match=r"did you mean dkkt.distance\?"):
        build_config("dm_dkkt", distance="l1")  # one spelling per setting: the full dotted key
    assert build_config("dm_dkkt", pipc="all").dkkt_config().alpha == 1.0  # cos: measured default
    assert build_config("dm_dkkt", {"dkkt.alpha": 0.3}, pipc="all").dkkt_config().alpha == 0.3
    assert build_config("dm_dkkt", ipc=1).init == "auto"
    m = method_class("dm_dkkt")(config("dm_dkkt", ipc=1), tiny_data())
    assert m.default_init == "noise"
    assert m.image_lr == 1000.0 and m.optimizer.param_groups[0]["lr"] == 1000.0  # 1/β
    assert method_class("dm_dkkt")(config("dm_dkkt", lr_img=3.0), tiny_data()).image_lr == 3.0
    dsv = method_class("dsv")(config("dsv"), tiny_data())
    assert dsv.image_lr == 0.05 and isinstance(dsv.optimizer, torch.optim.Adam)  # DSV: Adam at 0.05
    assert method_class("dsv")(config("dsv", image_optimizer="sgd"), tiny_data()).image_lr == 100.0
    assert build_config("dm_dkkt", ipc=1).dkkt_config().alpha == 1.0
    assert build_config("dm_dkkt", ipc=10).dkkt_config().alpha == 0.01  # measured: no harm at ipc 10
    assert build_config("dsv", ipc=10).dkkt_config().alpha == 1.0
    assert build_config("dm_dkkt").dkkt.stationarity == "margin"


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_is_bf16_where_native_for_dm_dkkt_and_fp32_for_dsv(native, monkeypatch):
    # measured (benchmarks/results/precision-cpu): DM+DKKT unchanged by the bf16 feature pass,
    # DSV moved beyond the float-rounding control, so DSV declares needs_fp32
    monkeypatch.setattr(runtime, "native_bf16", lambda device: native)
    small = dict(ipc=2, pipc=4, iterations=3, net_width=4, net_depth=1)
    with runtime.use(precision="auto"):
        dsv = method_class("dsv")(build_config("dsv", **small), tiny_data())
        both = method_class("dm_dkkt")(build_config("dm_dkkt", **small), tiny_data())
    assert dsv.dkkt.speed.precision == "fp32" and not dsv.dkkt.uses_bf16(dsv.images)
    assert both.dkkt.speed.precision == "auto" and both.dkkt.uses_bf16(both.images) is native
    with runtime.use(precision="bf16"):
        assert method_class("dsv")(build_config("dsv", **small), tiny_data()).dkkt.uses_bf16(dsv.images)


def test_errors():
    with pytest.raises(ConfigError, match="has no setting 'alpha'"):
        build_config("dm", alpha=0.1)
    with pytest.raises(ConfigError, match="dkkt.distance must be one of l1, l2, cos"):
        build_config("dm_dkkt", {"dkkt.distance": "l3"})
    with pytest.raises(ConfigError, match="pipc must be a positive integer or 'all'"):
        build_config("dm", pipc=0)
    with pytest.raises(ConfigError, match="has no setting 'augment.name'"):
        build_config("dc", {"augment.name": "dsa"})  # DC matches un-augmented gradients
    with pytest.raises(ConfigError, match="edge model"):
        method_class("dm_dkkt")(config("dm_dkkt"), tiny_data(edge=False))


def test_dm_dkkt_step_takes_the_gradient_of_the_summed_loss():
    # the step backpropagates the DKKT term and the data term one after the other (to halve the
    # activations alive at once): the images and multipliers get the gradient of their sum
    a = method_class("dm_dkkt")(config("dm_dkkt", ipc=2), tiny_data())
    b = method_class("dm_dkkt")(config("dm_dkkt", ipc=2), tiny_data())
    b.load_state_dict(a.state_dict())
    log = a.step(0)
    dkkt, _ = b.dkkt_terms()
    total = dkkt + b.beta * b.data_term()  # the same random draws, in the same order
    g_images, g_rho = torch.autograd.grad(total, [b.images, b.dkkt.rho])
    assert log["loss"] == pytest.approx(float(total.detach()), rel=1e-6)
    assert torch.allclose(a.images.grad, g_images, rtol=1e-5, atol=1e-8)
    assert torch.allclose(a.dkkt.rho.grad, g_rho, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("backend", ["cpu", "torch", "compile"])
@pytest.mark.parametrize("name", ["dm", "dm_dkkt"])
def test_the_speed_settings_reach_the_losses_and_the_record(name, backend):
    # no speed keyword reaches a loss: each reads the process-wide settings when the method builds it
    with runtime.use(backend=backend):
        m = method_class(name)(config(name), tiny_data())
    assert m.dm.speed == runtime.Settings("fp32", backend)
    record = m.runtime_record()
    assert (record["precision"], record["backend"]) == ("fp32", backend)  # as the losses were built
    assert record["passes"]["dm.synthetic"]["backend"] == ("cpu" if backend == "cpu" else "torch")
    if name == "dm_dkkt":
        assert m.dkkt.speed == m.dm.speed
        assert record["passes"]["dkkt.features"]["backend"] == ("cpu" if backend == "cpu" else "torch")
    for field in ("real_precision", "compile_real", "fused_real", "fused_syn"):
        assert field not in {f.name for f in dataclasses.fields(m.config)}


@pytest.mark.parametrize("name", ["dm", "dm_dkkt"])
def test_non_finite_loss_stops_before_the_update(name):
    m = method_class(name)(config(name, lr_img=1e30), tiny_data())
    with pytest.raises(NonFiniteLossError, match="last good state"):
        for i in range(20):
            good = m.images.detach().clone()
            m.step(i)
    assert torch.equal(good, m.images.detach())


DSV_RECIPES = {
    "manifold": dict(manifold_weight=5.0, manifold_strategy="crop_flip"),
    "lowres": dict(downscale=(4, 2), upscale_every=2, image_optimizer="adam", lr_img=0.05),
    "haim": {"dkkt.stationarity": "margin", "dkkt.soft_relu": 20.0, "dkkt.multiplier": "projected",
             "dkkt.lambda_min": 0.1, "multiplier_optimizer": "sgd"},
}


@pytest.mark.parametrize("recipe", sorted(DSV_RECIPES))
def test_dsv_recipes_keep_shapes_labels_and_resume_exactly(recipe):
    overrides = {"iterations": 6, **DSV_RECIPES[recipe]}
    full = method_class("dsv")(config("dsv", **overrides), tiny_data())
    for i in range(6):
        full.step(i)
    first = method_class("dsv")(config("dsv", **overrides), tiny_data())
    for i in range(3):
        first.step(i)
    resumed = method_class("dsv")(config("dsv", **overrides), tiny_data())
    resumed.load_state_dict(first.state_dict())
    for i in range(3, 6):
        resumed.step(i)
    assert torch.equal(full.images, resumed.images) and full.images.shape == (6, 1, 8, 8)
    assert full.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_low_resolution_stages_give_low_frequency_images():
    from dkkt_plugin.fidelity import high_frequency_share

    lowres = method_class("dsv")(config("dsv", downscale=(4,), upscale_every=10, iterations=4), tiny_data())
    plain = method_class("dsv")(config("dsv", downscale=(), iterations=4), tiny_data())
    for i in range(4):
        lowres.step(i), plain.step(i)
    assert lowres.config.factor_at(3) == 4 and lowres.config.factor_at(10) is None
    assert build_config("dsv").downscale == (4, 2) and build_config("dm_dkkt").downscale == ()
    assert high_frequency_share(lowres.images) < 0.5 * high_frequency_share(plain.images)


def test_dsv_initializer_is_the_dsv_method():
    """One generator: the `dsv` initializer returns what the `dsv` method makes with the same recipe."""
    from dkkt_plugin.initializers import dsv_init

    data = tiny_data()
    cfg = config("dsv", iterations=3, seed=11, manifold_weight=1.0)
    images, labels = dsv_init(2, num_classes=3, image_shape=(1, 8, 8), model=data.edge_model, config=cfg)
    m = method_class("dsv")(cfg, tiny_data())
    for i in range(3):
        m.step(i)
    assert torch.equal(images, m.images.detach()) and torch.equal(labels, m.labels)
