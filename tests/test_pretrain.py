"""`dkkt pretrain`: trains the edge ConvNet and records its provenance."""
import torch

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
    assert meta["arch"] == dict(channels=3, num_classes=10, image_size=32, width=4, depth=1,
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
