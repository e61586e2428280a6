"""Every method's resolved config: each "auto" / None / by-ipc setting is recorded as the value
that runs, the values follow the documented rules, and each field's help states the rule."""
import dataclasses
import json
import re

import pytest
import torch

from dkkt_plugin import config as configs
from dkkt_plugin import registry, runtime
from dkkt_plugin.engine import build_config, method_class
from dkkt_plugin.methods import DistillData
from dkkt_plugin.nets import ConvNet

METHODS = registry.names("methods")  # every registered method, third-party ones included
FAST = dict(net_width=4, net_depth=1, outer_loop=2, inner_loop=1)
UNRESOLVED = (None, "auto")


def tiny_data(classes=3, per_class=4, edge=True, **extra):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat(per_class)
    x = torch.randn(len(y), 1, 8, 8, generator=g) + y[:, None, None, None].float()
    model = ConvNet(1, classes, 8, width=4, depth=1) if edge else None
    return DistillData(x, y, classes, (0.0,), (1.0,), model, **extra)


def build(name, overrides=None, data=None, **kw):
    """The method on tiny data with its own defaults ("auto" stays "auto") for what is not given."""
    cls = method_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    opts = {k: v for k, v in {"ipc": 2, "pipc": 4, "iterations": 3, **FAST, **kw}.items() if k in fields}
    return cls(build_config(name, overrides, **opts), data if data is not None else tiny_data())


def leaves(tree, prefix=""):
    """``{dotted path: value}`` of a nested dict."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("ipc", [1, 2])
@pytest.mark.parametrize("name", METHODS)
def test_no_setting_stays_auto_or_none(name, ipc):
    m = build(name, ipc=ipc)
    resolved = m.resolved_config()
    unresolved = {k: v for k, v in leaves(resolved).items() if v in UNRESOLVED}
    assert not unresolved, f"{name} records unresolved settings {unresolved}"
    asked = dataclasses.asdict(m.config)
    assert leaves(resolved).keys() == leaves(asked).keys()  # the config's own layout, nested alike
    assert json.loads(json.dumps(resolved)) == json.loads(json.dumps(resolved, default=str))  # plain JSON


@pytest.mark.parametrize("name", METHODS)
def test_resolving_changes_nothing_that_runs(name):
    plain, asked = build(name), build(name)
    asked.resolved_config()
    for i in range(2):
        plain.step(i), asked.step(i)
    assert torch.equal(plain.images, asked.images)


@pytest.mark.parametrize("name", METHODS)
def test_recorded_lr_img_is_the_image_optimisers(name):
    m = build(name)
    optimizer = getattr(m, "optimizer", None)
    if optimizer is None:
        pytest.skip(f"{name} has no `optimizer` to compare with")
    assert m.resolved_config()["lr_img"] == optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("name,settings,lr", [
    ("dm", {}, 1.0), ("dm_star", {}, 1.0), ("dc", {}, 0.1), ("dsa", {}, 0.1),
    ("dsv", {}, 0.05), ("dsv", {"image_optimizer": "sgd"}, 100.0),
    ("dm_dkkt", {"ipc": 1}, 1000.0), ("dm_dkkt", {"ipc": 10}, 1000.0), ("dm_dkkt", {"ipc": 50}, 100.0),
    ("dm_dkkt", {"beta": 0.0}, 100.0), ("dm_dkkt", {"beta": 0.0, "image_optimizer": "adam"}, 0.05),
    ("dm_dkkt", {"beta": 0.02}, 50.0), ("dm_dkkt", {"lr_img": 3.0}, 3.0), ("dsv", {"lr_img": 2.0}, 2.0),
])
def test_lr_img_resolves_by_the_documented_rule(name, settings, lr):
    m = build(name, init="noise", **settings)  # noise: ipc 50 needs no 50 real images per class
    assert m.resolved_config()["lr_img"] == pytest.approx(lr)


@pytest.mark.parametrize("ipc,beta", [(1, 0.001), (10, 0.001), (49, 0.001), (50, 0.01), (60, 0.01)])
def test_beta_resolves_by_ipc(ipc, beta):
    assert build("dm_dkkt", ipc=ipc, init="noise").resolved_config()["beta"] == beta
    assert build("dm_dkkt", ipc=ipc, init="noise", beta=0.05).resolved_config()["beta"] == 0.05


@pytest.mark.parametrize("name,distance,ipc,pipc,alpha", [
    ("dm_dkkt", "cos", 1, 10, 1.0), ("dm_dkkt", "cos", 2, 10, 0.01), ("dm_dkkt", "cos", 10, "all", 0.01),
    ("dsv", "cos", 1, 10, 1.0), ("dsv", "cos", 10, 50, 1.0),
    ("dm_dkkt", "l1", 2, 10, 0.1), ("dm_dkkt", "l1", 2, 49, 0.1), ("dm_dkkt", "l2", 2, 50, 0.01),
    ("dm_dkkt", "l1", 2, 51, 0.001), ("dsv", "l2", 1, "all", 0.001), ("dsv", "l1", 1, 10, 0.1),
])
def test_alpha_resolves_by_distance_ipc_and_pipc_and_is_the_one_the_loss_applies(name, distance, ipc, pipc, alpha):
    with runtime.use(precision="fp32"):
        m = build(name, {"dkkt.distance": distance}, ipc=ipc, pipc=pipc, init="noise")
    resolved = m.resolved_config()["dkkt"]["alpha"]
    assert resolved == alpha
    parts = m.dkkt.terms(m.images, m.labels).detached()  # the loss really weighs its stationarity by α
    assert parts["stationarity"] > 0
    assert parts["total"] == pytest.approx(parts["primal"] + resolved * parts["stationarity"], rel=1e-6)
    asked = build(name, {"dkkt.distance": distance, "dkkt.alpha": 0.3}, ipc=ipc, pipc=pipc, init="noise")
    assert asked.resolved_config()["dkkt"]["alpha"] == 0.3


def passes(m) -> dict[str, str]:
    """``{pass: precision}`` of the method's runtime record."""
    return {name: entry["precision"] for name, entry in m.runtime_record()["passes"].items()}


@pytest.mark.parametrize("native", [True, False])
def test_the_record_states_the_precision_each_pass_runs_on_this_hardware(native, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: native)
    auto = "bf16" if native else "fp32"
    with runtime.use(precision="auto"):
        assert passes(build("dm")) == {"dm.real": auto, "dm.synthetic": "fp32"}
        assert passes(build("dm_star"))["dm.real"] == auto
        assert passes(build("dm_dkkt")) == {"dkkt.features": auto, "dm.real": auto, "dm.synthetic": "fp32"}
        assert passes(build("dsv")) == {"dkkt.features": "fp32"}  # dsv needs fp32: auto reads as fp32
        # the bf16 feature pass needs classifier-only parameters: with all of them it is fp32
        assert passes(build("dm_dkkt", {"dkkt.params": "all"}))["dkkt.features"] == "fp32"
        record = build("dsv").runtime_record()
        assert (record["precision"], record["backend"], record["needs_fp32"]) == ("fp32", "cpu", True)
    for precision in ("bf16", "fp32"):
        with runtime.use(precision=precision):
            assert passes(build("dsv")) == {"dkkt.features": precision}  # asked for: it runs
            assert passes(build("dm"))["dm.real"] == precision


@pytest.mark.parametrize("name,precision", [("dm_dkkt", "auto"), ("dsv", "bf16"), ("dsv", "auto")])
def test_recorded_dkkt_precision_is_the_pass_that_runs(name, precision, monkeypatch):
    from dkkt_plugin.losses.dkkt import DKKTLoss

    with runtime.use(precision=precision):
        m = build(name)
    calls = []
    embed = DKKTLoss._embed_bf16
    monkeypatch.setattr(DKKTLoss, "_embed_bf16", lambda *args: calls.append(1) or embed(*args))
    m.step(0)
    assert (passes(m)["dkkt.features"] == "bf16") == bool(calls)


@pytest.mark.parametrize("ipc,loops", [(1, (1, 1)), (2, (10, 50)), (10, (10, 50)), (11, (20, 25)),
                                       (40, (40, 15)), (50, (50, 10)), (60, (50, 10))])
@pytest.mark.parametrize("name", ["dc", "dsa"])
def test_loops_resolve_by_ipc(name, ipc, loops):
    m = build(name, ipc=ipc, init="noise", outer_loop=0, inner_loop=0)
    resolved = m.resolved_config()
    assert (resolved["outer_loop"], resolved["inner_loop"]) == loops
    asked = build(name, ipc=ipc, init="noise", outer_loop=3, inner_loop=4).resolved_config()
    assert (asked["outer_loop"], asked["inner_loop"]) == (3, 4)


def test_recorded_loops_are_the_loops_that_run():
    m = build("dc", ipc=2, outer_loop=0, inner_loop=0)
    matched, epochs = [], []
    gm = m.gm
    m.gm = lambda *args, **kw: matched.append(1) or gm(*args, **kw)
    m._train_net_epoch = lambda net, opt: epochs.append(1)
    m.step(0)
    resolved = m.resolved_config()
    assert len(matched) == resolved["outer_loop"] == 10
    assert len(epochs) == (resolved["outer_loop"] - 1) * resolved["inner_loop"]


@pytest.mark.parametrize("name,ipc,init", [("dm", 1, "real"), ("dm_star", 1, "real"), ("dc", 1, "real"),
                                           ("dsa", 2, "real"), ("dsv", 2, "noise"), ("dm_dkkt", 1, "noise"),
                                           ("dm_dkkt", 2, "real")])
def test_init_resolves_to_the_initializer_used(name, ipc, init, monkeypatch):
    assert build(name, ipc=ipc).resolved_config()["init"] == init
    assert build(name, ipc=ipc, init="noise").resolved_config()["init"] == "noise"
    used = []
    load = registry.load
    monkeypatch.setattr(registry, "load", lambda group, what: used.append((group, what)) or load(group, what))
    build(name, ipc=ipc)
    assert ("initializers", init) in used


def test_data_root_and_edge_model_say_where_they_came_from(tiny_fashion_mnist):
    from dkkt_plugin.data.sources import load_fashion_mnist

    root = load_fashion_mnist(tiny_fashion_mnist).root
    assert root == str(tiny_fashion_mnist)
    assert build("dm", data=tiny_data(data_root=root)).resolved_config()["data_root"] == root
    assert build("dm", data=tiny_data(data_root=root), data_root="/elsewhere").resolved_config()["data_root"] \
        == "/elsewhere"
    in_memory = build("dm", data=tiny_data(edge=False)).resolved_config()
    assert in_memory["data_root"] == "given in memory" and in_memory["edge_model"] == "none"
    assert build("dsv").resolved_config()["edge_model"] == "given in memory"
    assert build("dsv", edge_model="edge.pt").resolved_config()["edge_model"] == "edge.pt"


# -- help states the rule ------------------------------------------------------------------------
HELP_GRID = [dict(ipc=1, pipc=10), dict(ipc=2, pipc=49), dict(ipc=20, pipc=50), dict(ipc=50, pipc="all"),
             dict(ipc=41, pipc=60, image_optimizer="sgd"), dict(ipc=2, beta=0.0, image_optimizer="adam"),
             dict(ipc=2, beta=0.0, image_optimizer="sgd")]
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?")


def _mentions(text: str, value) -> bool:
    if isinstance(value, str):
        return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text) is not None
    return any(float(t) == pytest.approx(float(value)) for t in NUMBER.findall(text))


@pytest.mark.parametrize("name", METHODS)
def test_help_of_each_auto_setting_names_every_value_it_resolves_to(name, monkeypatch):
    specs = {s.path: s for s in configs.config_fields(method_class(name).config_class)}
    missing = set()
    for native in (True, False):
        monkeypatch.setattr(runtime, "native_bf16", lambda device, native=native: native)
        for distance in ("cos", "l1"):
            for settings in HELP_GRID:
                m = build(name, {"dkkt.distance": distance} if "dkkt.alpha" in specs else None,
                          init="noise", outer_loop=0, inner_loop=0, **settings)
                asked = leaves(dataclasses.asdict(m.config))
                for path, value in leaves(m.resolved_config()).items():
                    if path in ("data_root", "edge_model") or asked[path] not in (None, "auto", 0):
                        continue  # paths, and settings given as they run
                    if value != asked[path] and not _mentions(specs[path].help, value):
                        missing.add((path, value))
    assert not missing, f"{name}: the help of these settings does not state the value they resolve to: " \
                        f"{sorted(missing, key=str)}"
