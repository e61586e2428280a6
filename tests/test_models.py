"""The model zoo (dkkt_plugin.models): shapes, DatasetCondensation's layouts, determinism, name
resolution, and the DKKT loss and cross-architecture evaluation with every architecture."""
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from dkkt_plugin import registry, runtime
from dkkt_plugin.errors import ConfigError
from dkkt_plugin.losses import DKKTLoss
from dkkt_plugin.losses.kkt import select_parameters
from dkkt_plugin.models import ZOO, build_model, final_linear, init_weights, size_options
from dkkt_plugin.nets import ConvNet

SHAPES = [(1, 28), (3, 32)]  # DatasetCondensation's: Fashion-MNIST / MNIST and CIFAR
# the final linear layer of each architecture, under DatasetCondensation's parameter names
HEADS = {"mlp": "fc_3", "lenet": "fc_3", "alexnet": "fc", "alexnet_bn": "fc", "vgg11": "classifier",
         "vgg11_bn": "classifier", "resnet18": "classifier", "resnet18_bn": "classifier"}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("channels,size", SHAPES)
@pytest.mark.parametrize("arch", ZOO)
def test_every_architecture_maps_images_to_logits(arch, channels, size):
    net = build_model(arch, channels, 10, size, generator=gen())
    x = torch.randn(3, channels, size, size, generator=gen(1))
    out = net.eval()(x)
    feats = net.embed(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    name, head = final_linear(net)
    assert feats.shape == (3, head.in_features) and name == HEADS.get(arch, "classifier")
    torch.testing.assert_close(head(feats), out)  # forward = final layer of embed
    assert net.config["channels"] == channels and net.config["image_size"] == size
    assert net.dkkt_arch == {"name": arch, "channels": channels, "num_classes": 10, "image_size": size}


def test_the_zoo_is_registered_and_convnet_is_the_packages():
    assert set(ZOO) <= set(registry.names("models"))
    net = build_model("convnet", 1, 10, 28, generator=gen(), width=8)
    ref = ConvNet(1, 10, 28, width=8, generator=gen())
    assert type(net) is ConvNet and all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                                          ref.state_dict().values()))
    assert build_model("convnet_bn", 1, 10, 28).config["norm"] == "batchnorm"
    assert build_model("convnet_nn", 1, 10, 28).config["norm"] == "none"
    assert [build_model(f"convnet_d{d}", 1, 10, 28).config["depth"] for d in (1, 2, 3, 4)] == [1, 2, 3, 4]


@pytest.mark.parametrize("arch,channels,params", [
    # hand-counted from DatasetCondensation's layer definitions (10 classes)
    ("lenet", 1, 6 * 25 + 6 + 16 * 6 * 25 + 16 + 400 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10),
    ("mlp", 1, 784 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10),
    ("mlp", 3, 3072 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10),
    ("resnet18", 3, 11173962),  # the CIFAR ResNet-18 (pytorch-cifar's count; GroupNorm has BN's parameters)
    ("alexnet", 1, (128 * 25 + 128) + (192 * 128 * 25 + 192) + (256 * 192 * 9 + 256) + (192 * 256 * 9 + 192)
     + (192 * 192 * 9 + 192) + 192 * 16 * 10 + 10),
])
def test_parameter_counts_are_datasetcondensations(arch, channels, params):
    net = build_model(arch, channels, 10, 28 if channels == 1 else 32)
    assert sum(p.numel() for p in net.parameters()) == params


def test_state_dict_names_follow_datasetcondensation():
    """A state dict saved from DatasetCondensation's networks has these names."""
    keys = set(build_model("resnet18_bn", 3, 10, 32).state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.weight",
            "layer4.1.bn2.bias", "classifier.weight"} <= keys
    assert list(build_model("lenet", 1, 10, 28).state_dict()) == [
        "features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias", "fc_1.weight",
        "fc_1.bias", "fc_2.weight", "fc_2.bias", "fc_3.weight", "fc_3.bias"]
    vgg = build_model("vgg11", 1, 10, 28).state_dict()
    assert vgg["features.0.weight"].shape == (64, 1, 3, 3) and vgg["features.1.weight"].shape == (64,)
    assert vgg["classifier.weight"].shape == (10, 512)
    alex_bn = build_model("alexnet_bn", 1, 10, 28).state_dict()
    assert alex_bn["features.1.running_var"].shape == (128,) and alex_bn["fc.weight"].shape == (10, 3072)


@pytest.mark.parametrize("arch", ZOO)
def test_weights_come_from_the_generator_only(arch):
    rng = torch.random.get_rng_state()
    a = build_model(arch, 1, 10, 28, generator=gen(3)).state_dict()
    b = build_model(arch, 1, 10, 28, generator=gen(3)).state_dict()
    c = build_model(arch, 1, 10, 28, generator=gen(4)).state_dict()
    assert torch.equal(torch.random.get_rng_state(), rng)  # torch's global RNG untouched
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].ndim >= 2)


def test_init_is_pytorchs_default_distribution():
    net = build_model("resnet18", 3, 10, 32, generator=gen())
    w = net.layer3[0].conv1.weight.detach()  # fan_in 128 * 9
    bound = 1 / (128 * 9) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound and abs(float(w.mean())) < 0.02 * bound
    assert torch.equal(net.bn1.weight, torch.ones(64)) and torch.equal(net.bn1.bias, torch.zeros(64))
    again = init_weights(net, gen())  # reset_parameters draws the same again
    assert torch.equal(again.layer3[0].conv1.weight, w)


def test_torchscript_compiles_the_zoo():
    for arch in ("mlp", "lenet", "alexnet_bn", "vgg11", "resnet18"):
        net = build_model(arch, 1, 10, 28).eval()
        x = torch.randn(2, 1, 28, 28, generator=gen())
        torch.testing.assert_close(torch.jit.script(net)(x), net(x))


def test_batch_norm_nets_are_per_sample_only_in_eval_mode():
    bn, inorm = build_model("resnet18_bn", 1, 10, 28), build_model("resnet18", 1, 10, 28)
    assert not bn.train().per_sample and bn.eval().per_sample and inorm.train().per_sample


def test_size_options():
    assert size_options("convnet", 32, 2) == {"width": 32, "depth": 2}
    assert size_options("convnet_d2", 32, 3, defaults={"width": 128, "depth": 3}) == {"width": 32}
    assert size_options("mlp", 128, 3, defaults={"width": 128, "depth": 3}) == {}
    with pytest.raises(ConfigError, match="width 32.*resnet18 has its own size"):
        size_options("resnet18", 32, 3, defaults={"width": 128, "depth": 3})


# -- names -------------------------------------------------------------------------------------
def test_unknown_name_lists_the_zoo():
    with pytest.raises(ConfigError) as err:
        build_model("resnet81", 1, 10, 28)
    assert "resnet18" in str(err.value) and "module.path:factory" in str(err.value) and "\n" not in str(err.value)


def test_too_small_images_and_wrong_settings_are_config_errors():
    with pytest.raises(ConfigError, match="LeNet cannot take 8 px"):
        build_model("lenet", 1, 10, 8)
    with pytest.raises(ConfigError, match="mlp does not take norm"):
        build_model("mlp", 1, 10, 28, norm="batchnorm")
    with pytest.raises(ConfigError, match="depth"):
        build_model("convnet_d1", 1, 10, 28, depth=2)


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "my_dkkt_models.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def tiny(channels, num_classes, image_size, *, generator=None, hidden=16):
            net = nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size ** 2, hidden), nn.ReLU(),
                                nn.Linear(hidden, num_classes))
            for p in net.parameters():
                p.data = torch.randn(p.shape, generator=generator) * 0.1
            return net

        def global_rng(channels, num_classes, image_size):
            return nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size ** 2, num_classes))

        not_callable = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("my_dkkt_models", None)


def test_module_callable_factories(user_models):
    a = build_model("my_dkkt_models:tiny", 1, 4, 8, generator=gen(1), hidden=5)
    b = build_model("my_dkkt_models:tiny", 1, 4, 8, generator=gen(1), hidden=5)
    assert a(torch.zeros(2, 1, 8, 8)).shape == (2, 4) and torch.equal(a[1].weight, b[1].weight)
    assert a.dkkt_arch == {"name": "my_dkkt_models:tiny", "channels": 1, "num_classes": 4, "image_size": 8,
                           "hidden": 5}
    # a factory without a generator runs under a seed drawn from it, the global RNG restored
    rng = torch.random.get_rng_state()
    c = build_model("my_dkkt_models:global_rng", 1, 4, 8, generator=gen(2))
    d = build_model("my_dkkt_models:global_rng", 1, 4, 8, generator=gen(2))
    assert torch.equal(c[1].weight, d[1].weight) and torch.equal(torch.random.get_rng_state(), rng)
    with pytest.raises(ConfigError, match="has no callable 'not_callable'"):
        build_model("my_dkkt_models:not_callable", 1, 4, 8)
    with pytest.raises(ConfigError, match="cannot import module 'no_such_dkkt_module'"):
        build_model("no_such_dkkt_module:f", 1, 4, 8)


@pytest.mark.parametrize("lib,hint", [("torchvision", "pip install torchvision"), ("timm", "pip install timm")])
def test_external_libraries_name_their_install(lib, hint, monkeypatch):
    monkeypatch.setitem(sys.modules, lib, None)  # as if not installed
    with pytest.raises(ConfigError) as err:
        build_model(f"{lib}:resnet18", 3, 10, 32)
    assert f"needs {lib}, which is not installed: {hint}" in str(err.value) and "\n" not in str(err.value)


def test_torchvision_models_are_built_with_the_class_count_under_a_drawn_seed(monkeypatch):
    """torchvision's own code is not needed to test the adapter: a stand-in with its API."""
    import types

    calls = []

    def get_model(name, weights=None, num_classes=1000):
        calls.append((name, weights, num_classes))
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))

    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(get_model=get_model, list_models=lambda: ["resnet18", "vgg11"])
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    rng = torch.random.get_rng_state()
    a = build_model("torchvision:resnet18", 3, 7, 32, generator=gen(5))
    b = build_model("torchvision:resnet18", 3, 7, 32, generator=gen(5))
    assert calls == [("resnet18", None, 7)] * 2 and torch.equal(a[1].weight, b[1].weight)
    assert torch.equal(torch.random.get_rng_state(), rng)
    with pytest.raises(ConfigError, match="torchvision has no model 'resnet81'"):
        build_model("torchvision:resnet81", 3, 7, 32)


@pytest.fixture
def model_plugin(tmp_path, monkeypatch):
    """A third-party distribution that adds a model to the group dkkt_plugin.models."""
    dist = tmp_path / "dkkt_model_thing-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dkkt-model-thing\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dkkt_plugin.models]\nwide_mlp = dkkt_model_thing_mod:wide_mlp\n")
    (tmp_path / "dkkt_model_thing_mod.py").write_text(textwrap.dedent("""
        from dkkt_plugin.models import MLP

        def wide_mlp(channels, num_classes, image_size, *, generator=None, device=None):
            return MLP(channels, num_classes, image_size, width=256, generator=generator, device=device)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("dkkt_model_thing_mod", None)


def test_a_third_party_package_adds_a_model(model_plugin):
    assert registry.get("models", "wide_mlp").distribution == "dkkt-model-thing"
    net = build_model("wide_mlp", 1, 10, 28, generator=gen())
    assert net.config["width"] == 256 and net(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


# -- the DKKT loss with any model ----------------------------------------------------------------
def test_classifier_selection_finds_the_final_linear_layer_of_any_model():
    for arch, head in HEADS.items():
        assert select_parameters(build_model(arch, 1, 10, 28), "classifier") == [f"{head}.weight", f"{head}.bias"]
    # a linear layer registered after the classifier (a projection) is passed over by class count
    net = build_model("mlp", 1, 10, 28)
    net.proj = nn.Linear(128, 32)
    assert select_parameters(net, "classifier") == ["fc_3.weight", "fc_3.bias"]
    assert select_parameters(build_model("alexnet", 1, 10, 28), "fc.") == ["fc.weight", "fc.bias"]
    assert select_parameters(build_model("lenet", 1, 10, 28), ("fc_2.", "fc_3.weight")) == [
        "fc_2.weight", "fc_2.bias", "fc_3.weight"]
    with pytest.raises(ConfigError, match=r"'head\.' matched no parameter of ResNet18 .*classifier\., conv1\."):
        select_parameters(build_model("resnet18", 1, 10, 28), "head.")
    with pytest.raises(ConfigError, match="no final nn.Linear with 10 outputs"):
        final_linear(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), 10)


def plain_model() -> nn.Module:
    """Any nn.Module: no embed(), no config, no classifier attribute."""
    torch.manual_seed(0)  # only inside the fork below
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3))


def dkkt_model(arch: str) -> nn.Module:
    if arch == "sequential":
        with torch.random.fork_rng(devices=[]):
            return plain_model().double()
    kw = {"width": 8} if arch.startswith("convnet") else {}
    return build_model(arch, 1, 3, 28, generator=gen(), **kw).double()


@pytest.mark.parametrize("arch", [*ZOO, "sequential"])
def test_dkkt_with_every_architecture(arch):
    """The loss is finite, moves the images, and its stationarity term is D(θ*, -Σ λ_i ∇θ ℓ_i)
    with explicit per-sample gradients (torch.func, float64) of the final linear layer."""
    net = dkkt_model(arch)
    n = 3
    x = torch.randn(n, 1, 28, 28, generator=gen(1), dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2])
    with runtime.use(precision="fp32"):
        loss = DKKTLoss(net, n, alpha=1.0, distance="l2", stationarity="ce", primal="ce", params="classifier").double()
    lam = torch.tensor([0.3, 1.7, 0.9], dtype=torch.float64)
    loss.set_multipliers(lam)
    terms = loss.terms(x, y)
    assert torch.isfinite(terms.total)
    (g_stat,) = torch.autograd.grad(terms.stationarity, x, retain_graph=True)
    terms.total.backward()
    assert x.grad.abs().sum() > 0 and g_stat.abs().sum() > 0

    head, _ = final_linear(net, 3)
    names = [f"{head}.weight", f"{head}.bias"]
    assert loss.param_names == names
    net.eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())

    def ce(w, xi, yi):
        out = functional_call(net, {**params, **w, **buffers}, (xi[None],))
        return F.cross_entropy(out, yi[None])

    per_sample = vmap(grad(ce), in_dims=(None, 0, 0))({k: params[k] for k in names}, x.detach(), y)
    residuals = [params[k] + torch.einsum("i,i...->...", lam, per_sample[k]) for k in names]
    expected = torch.stack([r.pow(2).mean() for r in residuals]).mean()
    torch.testing.assert_close(terms.stationarity.detach(), expected, rtol=1e-10, atol=1e-14)


class _Holder(nn.Module):
    """A model whose attribute named ``classifier`` is a whole ConvNet."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = ConvNet(1, 3, 8, width=4, depth=1, generator=gen())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


def test_the_stationarity_gradient_is_exact_when_selected_parameters_lie_in_a_convnets_blocks():
    """The fused ConvNet blocks have no double backward: with a block's weights selected (whatever
    the names around the ConvNet), the images' gradient of the stationarity term must still equal
    the one torch.func computes through plain torch ops (float64)."""
    model = _Holder().double()
    x = torch.randn(3, 1, 8, 8, generator=gen(1), dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2])
    name = "classifier.features.0.weight"
    loss = DKKTLoss(model, 3, alpha=1.0, distance="l2", stationarity="ce", param_filter=lambda n, p: n == name).double()
    (got,) = torch.autograd.grad(loss.terms(x, y).stationarity, x)

    params = {k: v.detach() for k, v in model.named_parameters()}

    def stationarity(images):
        def ce(w, xi, yi):
            return F.cross_entropy(functional_call(model, {**params, name: w}, (xi[None],)), yi[None])

        g = vmap(grad(ce), in_dims=(None, 0, 0))(params[name], images, y)  # (3, *θ.shape)
        return (params[name] + g.sum(0)).pow(2).mean()  # λ = 1

    with torch.random.fork_rng(devices=[]):
        expected = grad(stationarity)(x.detach())
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


# -- cross-architecture evaluation ---------------------------------------------------------------
def test_evaluate_synthetic_trains_the_named_architecture():
    from dkkt_plugin.evaluation import EvalProtocol, evaluate_synthetic
    from dkkt_plugin.training import TrainConfig

    g = gen()
    x, y = torch.randn(6, 1, 28, 28, generator=g), torch.tensor([0, 1, 2] * 2)
    tiny = EvalProtocol("tiny", TrainConfig(epochs=2, lr=0.01))
    default = evaluate_synthetic(x, y, x, y, protocol=tiny, num_eval=2, width=4, depth=1)
    convnet = evaluate_synthetic(x, y, x, y, protocol=tiny, num_eval=2, width=4, depth=1, arch="convnet")
    assert default.accuracies == convnet.accuracies and default.arch == convnet.arch == "convnet"
    mlp = evaluate_synthetic(x, y, x, y, protocol=tiny, num_eval=2, width=4, depth=1, arch="mlp")
    assert mlp.arch == "mlp" and mlp.as_dict()["arch"] == "mlp" and len(mlp.accuracies) == 2
    with pytest.raises(ConfigError, match="arch resnet81: unknown architecture"):
        evaluate_synthetic(x, y, x, y, protocol=tiny, arch="resnet81")
