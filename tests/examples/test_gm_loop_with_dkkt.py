"""The example gradient-matching loop: fraction 0 reproduces the plain loop exactly; a positive
fraction changes the images, by the documented share of the matching gradient; its command line
writes a synthetic set that `dkkt evaluate` reads."""
import importlib.util
from pathlib import Path

import pytest
import torch

from dkkt_plugin.losses import GradBalance
from dkkt_plugin.nets import ConvNet

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gm_loop_with_dkkt.py"


def load_example():
    spec = importlib.util.spec_from_file_location("gm_loop_with_dkkt", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(5)
    return torch.randn(15, 1, 28, 28, generator=g), y


def test_fraction_zero_is_the_plain_loop_and_a_fraction_changes_images(monkeypatch):
    ex = load_example()
    real, y = data()
    edge = ConvNet(1, 3, 28, width=8)
    kw = dict(ipc=1, iterations=2, outer_loop=2, inner_loop=1, batch_real=4)
    plain = ex.distill(real, y, 3, **kw)
    zero = ex.distill(real, y, 3, edge_model=edge, balance_fraction=0.0, **kw)
    assert torch.equal(plain, zero)
    ratios = []
    backward = GradBalance.backward
    monkeypatch.setattr(GradBalance, "backward", lambda *a, **k: ratios.append(backward(*a, **k).ratio))
    some = ex.distill(real, y, 3, edge_model=edge, balance_fraction=0.5, **kw)
    assert not torch.allclose(plain, some)
    assert len(ratios) == 4 and all(r == pytest.approx(0.5, rel=1e-6) for r in ratios)  # every image update
    assert all(p.grad is None for p in edge.parameters())


def test_command_line_writes_a_set_dkkt_evaluate_reads(tiny_fashion_mnist, tmp_path, capsys):
    from dkkt_plugin.cli import main
    from dkkt_plugin.engine import read_evaluations

    out = tmp_path / "example"
    assert load_example().main(["--out", str(out), "--data-root", str(tiny_fashion_mnist), "--pipc", "2",
                                "--iterations", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example"]  # nothing else written
    assert main(["evaluate", "--synthetic", str(out), "--num-eval", "1", "--eval-epochs", "1",
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    [ev] = read_evaluations(out)
    assert ev["num_eval"] == 1
