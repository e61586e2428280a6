"""`dkkt pretrain`: trains the edge model (any architecture) and records its provenance; edge models
trained elsewhere (TorchScript, state dict + --edge-arch) and the one-line errors of a wrong model."""
import json

import pytest
import torch

from dkkt_plugin import runtime
from dkkt_plugin.cli import main
from dkkt_plugin.data import load_cifar10, write_cifar10
from dkkt_plugin.pretrain import load_edge_model
from dkkt_plugin.training import accuracy


def test_pretrain_cli_records_provenance(tmp_path, capsys):
    root = write_cifar10(tmp_path, num_train=40, num_test=20, seed=1)
    out = tmp_path / "edge.pt"
    assert main(["pretrain", "--dataset", "cifar10", "--data-root", str(root), "--width", "4",
                 "--depth", "1", "--epochs", "2", "--batch-size", "16", "--weight-decay", "0.005",
                 "--seed", "3", "--out", str(out), "--device", "cpu"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    model, meta = load_edge_model(out)
    assert meta["dataset"] == "cifar10" and meta["seed"] == 3
    assert meta["arch"] == dict(name="convnet", channels=3, num_classes=10, image_size=32, width=4, depth=1,
                                norm="instancenorm", pooling="avg")
    assert meta["train_config"]["weight_decay"] == 0.005 and meta["config"]["epochs"] == 2
    assert meta["command"].startswith("dkkt pretrain --dataset cifar10")
    assert list(meta["mean"]) == [0.4914, 0.4822, 0.4465]
    test = load_cifar10(root, train=False)
    assert meta["test_accuracy"] == accuracy(model, test.images, test.targets)
    # deterministic: the same command gives the same weights
    out2 = tmp_path / "edge2.pt"
    main(["pretrain", "--dataset", "cifar10", "--data-root", str(root), "--width", "4", "--depth", "1",
          "--epochs", "2", "--batch-size", "16", "--weight-decay", "0.005", "--seed", "3",
          "--out", str(out2), "--device", "cpu"])
    other, _ = load_edge_model(out2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_refit_classifier_reaches_the_kkt_point():
    import torch.nn.functional as F

    from dkkt_plugin.nets import ConvNet
    from dkkt_plugin.pretrain import refit_classifier

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 8, 8, generator=g)
    y = torch.arange(60) % 3
    model = ConvNet(1, 3, 8, width=4, depth=1, generator=g)
    wd = 0.01
    refit_classifier(model, x, y, wd)
    lin = model.classifier
    loss = F.cross_entropy(model(x), y, reduction="sum")
    gw, gb = torch.autograd.grad(loss, [lin.weight, lin.bias])
    theta = torch.cat([lin.weight.flatten(), lin.bias]).detach()
    resid = theta + torch.cat([gw.flatten(), gb]) / (wd * len(x))
    assert float(resid.norm() / theta.norm()) < 1e-3


# -- any architecture ---------------------------------------------------------------------------
FMNIST = ["--dataset", "fashion_mnist", "--device", "cpu", "--threads", "1"]
DISTILL = [*FMNIST, "--ipc", "1", "--pipc", "2", "--iterations", "2", "--net-width", "4", "--net-depth", "1"]


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_refit_classifier_reaches_the_kkt_point_of_any_architecture():
    import torch.nn.functional as F

    from dkkt_plugin.models import build_model
    from dkkt_plugin.pretrain import refit_classifier

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.arange(60) % 3
    model = build_model("mlp", 1, 3, 8, generator=g, width=6).double()  # float32 stops short on these small features
    refit_classifier(model, x, y, 0.01)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    gw, gb = torch.autograd.grad(loss, [model.fc_3.weight, model.fc_3.bias])
    theta = torch.cat([model.fc_3.weight.flatten(), model.fc_3.bias]).detach()
    assert float((theta + torch.cat([gw.flatten(), gb]) / (0.01 * len(x))).norm() / theta.norm()) < 1e-3


def test_pretrain_any_architecture_then_distill_and_evaluate_across_architectures(tiny_fashion_mnist, tmp_path,
                                                                                  capsys):
    root = ["--data-root", tiny_fashion_mnist]
    edge = tmp_path / "mlp.pt"
    code, out, err = _run(["pretrain", *FMNIST, *root, "--arch", "mlp", "--epochs", "2", "--batch-size", "16",
                           "--out", edge], capsys)
    assert code == 0 and "(mlp)" in out, err
    model, meta = load_edge_model(edge)
    assert meta["arch"] == {"name": "mlp", "channels": 1, "num_classes": 10, "image_size": 28}
    assert type(model).__name__ == "MLP" and meta["config"]["arch"] == "mlp" and meta["source"] == "checkpoint"
    # distill rebuilds the recorded architecture with no extra flag
    run = tmp_path / "run"
    code, out, err = _run(["distill", *DISTILL, *root, "--method", "dm_dkkt", "--edge-model", edge, "--out", run],
                          capsys)
    assert code == 0, err
    assert "DKKT:" in out
    code, out, err = _run(["evaluate", "--synthetic", run, "--arch", "convnet", "mlp", "--num-eval", "1",
                           "--eval-epochs", "1", "--device", "cpu", "--threads", "1", "--json", tmp_path / "ev.json"],
                          capsys)
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.startswith(str(run))]
    assert [ln.split("]")[0].split("[")[1] for ln in lines] == ["convnet", "mlp"]
    evaluations = [json.loads(ln) for ln in (run / "evaluations.jsonl").read_text().splitlines()]
    assert [e["arch"] for e in evaluations] == ["convnet", "mlp"]
    assert [e["arch"] for e in json.loads((tmp_path / "ev.json").read_text())["evaluations"]] == ["convnet", "mlp"]


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Edge models saved outside dkkt-plugin for Fashion-MNIST (1 channel, 28 px, 10 classes), and
    wrong ones."""
    from dkkt_plugin.models import build_model

    d = tmp_path_factory.mktemp("foreign")
    lenet = build_model("lenet", 1, 10, 28, generator=torch.Generator().manual_seed(0)).eval()
    torch.jit.trace(lenet, torch.zeros(2, 1, 28, 28)).save(str(d / "lenet_traced.pt"))
    torch.jit.script(build_model("mlp", 1, 10, 28)).save(str(d / "mlp_scripted.pt"))
    torch.save(lenet.state_dict(), d / "lenet_state.pth")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in lenet.state_dict().items()}},
               d / "lenet_nested.pt")
    torch.save(build_model("lenet", 1, 5, 28).state_dict(), d / "lenet_5cls.pth")
    torch.save(build_model("lenet", 3, 10, 28).state_dict(), d / "lenet_rgb.pth")
    torch.jit.trace(build_model("lenet", 1, 5, 28).eval(), torch.zeros(2, 1, 28, 28)).save(str(d / "ts_5cls.pt"))
    torch.jit.trace(build_model("lenet", 3, 10, 32).eval(), torch.zeros(2, 3, 32, 32)).save(str(d / "ts_rgb.pt"))
    torch.save(torch.nn.Linear(2, 2), d / "pickled_module.pt")  # a whole pickled module: not loadable safely
    return d, lenet


def test_torchscript_and_state_dict_edge_models_load(foreign):
    from dkkt_plugin.engine import check_edge_model
    from dkkt_plugin.pretrain import EdgeSpec

    d, lenet = foreign
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for name in ("lenet_traced.pt", "mlp_scripted.pt"):
        model, meta = load_edge_model(d / name)
        assert meta["source"] == "torchscript" and not model.training
        check_edge_model(model, name, (1, 28, 28), 10, meta=meta, mean=(0.286,), std=(0.353,))
    torch.testing.assert_close(load_edge_model(d / "lenet_traced.pt")[0](x), lenet(x))
    for name in ("lenet_state.pth", "lenet_nested.pt"):
        model, meta = load_edge_model(d / name, edge=EdgeSpec(arch="lenet"), image_shape=(1, 28, 28), num_classes=10)
        assert meta["source"] == "state_dict" and meta["arch"]["name"] == "lenet"
        torch.testing.assert_close(model(x), lenet(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["lenet_traced.pt", "mlp_scripted.pt"])
def test_a_torchscript_edge_model_gives_the_dkkt_loss_of_the_original(foreign, name):
    """torch.func cannot run a scripted module itself; the loaded model gives the same loss,
    image gradient and per-sample gradients (multiplier fit) as the Python model it was saved from."""
    from dkkt_plugin.losses import DKKTLoss
    from dkkt_plugin.models import build_model

    d, lenet = foreign
    original = lenet if name.startswith("lenet") else build_model("mlp", 1, 10, 28).eval()
    scripted, _ = load_edge_model(d / name)
    x = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(2), requires_grad=True)
    y = torch.arange(10)
    with runtime.use(precision="fp32"):
        got, want = (DKKTLoss(m, 10, alpha=1.0, distance="l2") for m in (scripted, original))
    assert got.param_names == want.param_names == ["fc_3.weight", "fc_3.bias"]
    a, b = got.terms(x, y), want.terms(x, y)
    torch.testing.assert_close(a.stationarity, b.stationarity)
    torch.testing.assert_close(torch.autograd.grad(a.total, x)[0], torch.autograd.grad(b.total, x)[0])
    assert got.fit_multipliers(x.detach(), y) == pytest.approx(want.fit_multipliers(x.detach(), y), rel=1e-5)
    assert all(p.grad is None for p in scripted.parameters()) and not scripted.training


def _one_line_error(argv, capsys, *expect):
    code, out, err = _run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (code, err)
    for text in expect:
        assert text in err, (text, err)


WRONG = [
    # state dicts
    ("state dict without --edge-arch", ["lenet_state.pth"], ["not a dkkt-plugin edge model", "--edge-arch NAME"]),
    ("class count (state dict)", ["lenet_5cls.pth", "--edge-arch", "lenet"], ["class count", "5 outputs"]),
    ("channels (state dict)", ["lenet_rgb.pth", "--edge-arch", "lenet"], ["channels", "takes 3 channel(s)"]),
    ("unknown architecture", ["lenet_state.pth", "--edge-arch", "resnet81"], ["resnet81", "unknown architecture"]),
    ("state dict of another architecture", ["lenet_state.pth", "--edge-arch", "resnet18"],
     ["does not fit --edge-arch resnet18", "missing conv1.weight", "unexpected features.0.weight"]),
    ("module path that does not import", ["lenet_state.pth", "--edge-arch", "nowhere_pkg.models:net"],
     ["cannot import module 'nowhere_pkg.models'"]),
    # TorchScript
    ("class count (TorchScript)", ["ts_5cls.pt"], ["num_classes 5", "needs 10"]),
    ("channels (TorchScript)", ["ts_rgb.pt"], ["cannot take the data's images (1 channel(s), 28x28 px)",
                                              "to have 3 channels"]),
    ("TorchScript with --edge-arch", ["lenet_traced.pt", "--edge-arch", "lenet"], ["drop --edge-arch lenet"]),
    # what the flags declare
    ("image size", ["lenet_traced.pt", "--edge-image-size", "32"], ["image_size 32 (the data needs 28)"]),
    ("class count (flag)", ["lenet_traced.pt", "--edge-num-classes", "5"], ["num_classes 5 (the data needs 10)"]),
    ("normalisation", ["lenet_traced.pt", "--edge-mean", "0.5", "--edge-std", "0.5"],
     ["normalisation mean (0.5) std (0.5)", "the data is normalised with mean (0.2861) std (0.353)"]),
    ("mean without std", ["lenet_traced.pt", "--edge-mean", "0.5"], ["--edge-mean", "--edge-std"]),
    ("a pickled module", ["pickled_module.pt"], ["pickled_module.pt", "state_dict"]),
]


@pytest.mark.parametrize("case,edge,expect", WRONG, ids=[w[0] for w in WRONG])
def test_every_wrong_edge_model_is_one_line_and_exit_2(foreign, tiny_fashion_mnist, tmp_path, capsys,
                                                       case, edge, expect):
    d, _ = foreign
    _one_line_error(["distill", *DISTILL, "--data-root", tiny_fashion_mnist, "--method", "dsv", "--edge-model",
                     d / edge[0], *edge[1:], "--out", tmp_path / "run"], capsys, *expect)
    assert not (tmp_path / "run").exists()


def test_flags_that_contradict_a_checkpoint_are_one_line(tiny_fashion_mnist, tmp_path, capsys):
    from dkkt_plugin.models import build_model
    from dkkt_plugin.pretrain import save_edge_model

    save_edge_model(tmp_path / "edge.pt", build_model("mlp", 1, 10, 28), {"dataset": "fashion_mnist"})
    _one_line_error(["distill", *DISTILL, "--data-root", tiny_fashion_mnist, "--method", "dsv", "--edge-model",
                     tmp_path / "edge.pt", "--edge-arch", "lenet", "--out", tmp_path / "run"], capsys,
                    "arch lenet (it records mlp)", "drop --edge-arch")


@pytest.mark.parametrize("edge", [["lenet_traced.pt"], ["lenet_nested.pt", "--edge-arch", "lenet", "--edge-mean",
                                                        "0.286", "--edge-std", "0.353"]])
def test_distill_with_a_foreign_edge_model(foreign, tiny_fashion_mnist, tmp_path, capsys, edge):
    d, _ = foreign
    code, out, err = _run(["distill", *DISTILL, "--data-root", tiny_fashion_mnist, "--method", "dsv",
                           "--edge-model", d / edge[0], *edge[1:], "--out", tmp_path / "run"], capsys)
    assert code == 0 and "DKKT:" in out, err


@pytest.mark.parametrize("argv,expect", [
    (["--arch", "resnet81"], ["--arch resnet81: unknown architecture", "resnet18"]),
    (["--arch", "resnet18", "--width", "32"], ["width 32", "resnet18 has its own size"]),
])
def test_pretrain_wrong_architecture_is_one_line(tiny_fashion_mnist, tmp_path, capsys, argv, expect):
    _one_line_error(["pretrain", *FMNIST, "--data-root", tiny_fashion_mnist, *argv, "--out",
                     tmp_path / "new" / "edge.pt"], capsys, *expect)
    assert not (tmp_path / "new").exists()


def test_evaluate_unknown_architecture_fails_before_training(tmp_path, capsys):
    _one_line_error(["evaluate", "--synthetic", tmp_path / "s.pt", "--arch", "convnet", "resnet81",
                     "--device", "cpu"], capsys, "--arch resnet81: unknown architecture")
