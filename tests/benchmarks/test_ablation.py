"""The DKKT ablation runner and the support-vector script."""
import json

import torch
from scipy.stats import ttest_ind
from torch import nn

from benchmarks import ablation
from benchmarks.support_vectors import uniform_residual
from dkkt_plugin.data import ImageDataset, PracticalSubset


def _dataset(per_class=300):
    y = torch.arange(10).repeat_interleave(per_class)
    return ImageDataset(torch.zeros(len(y), 1, 2, 2), y, classes=tuple(map(str, range(10))),
                        mean=(0.0,), std=(1.0,), name="toy")


def test_validation_split_is_balanced_and_disjoint_from_practical_subsets():
    ds = _dataset()
    val = ablation.validation_indices(ds, per_class=20)
    assert torch.bincount(ds.targets[val]).tolist() == [20] * 10
    for seed in range(5):
        for pipc in (10, 50):
            assert not set(val.tolist()) & set(PracticalSubset(ds, pipc, seed=seed).indices.tolist())
    assert torch.equal(val, ablation.validation_indices(ds, per_class=20))


def test_every_variant_builds_a_config():
    from dkkt_plugin.engine import build_config

    for name, (method, overrides) in ablation.VARIANTS.items():
        build_config(method, ipc=1, pipc=10, **overrides)


def test_report_table_and_welch(tmp_path, capsys):
    lines = []
    accs = {"dm": [0.60, 0.62, 0.61], "dkkt_default": [0.65, 0.66, 0.64]}
    for variant, values in accs.items():
        for seed, acc in enumerate(values):
            lines.append({"key": f"{variant}/10/{seed}", "variant": variant, "pipc": 10, "seed": seed,
                          "split": "val", "accuracy": acc, "final": {"stat_ratio": 0.5} if variant != "dm" else {}})
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    assert ablation.main(["report", "--results", str(path), "--out", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    p = ttest_ind([65, 66, 64], [60, 62, 61], equal_var=False).pvalue
    row = next(r for r in text.splitlines() if r.startswith("| dkkt_default |"))
    assert "65.00 ± 0.82 (n=3)" in row and f"{p:.3g}" in row and "0.500" in row
    assert "held-out training images" in text


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


def test_curves_plot_dkkt_runs_and_skip_dm(tmp_path, capsys):
    def history(ratio):
        return [{"iteration": i, "stat_ratio": ratio / (i + 1), "primal": 0.0, "edge_accuracy": 1.0,
                 "lambda_median": 1.0} for i in range(5)]

    runs = tmp_path / "runs" / "val"
    for name, hist in {"dkkt_default-10-0": history(1.0), "dkkt_default-10-1": history(2.0),
                       "dm-10-0": [{"iteration": 0, "loss": 1.0}]}.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "record.json").write_text(json.dumps({"history": hist}))
    assert ablation.main(["curves", "--out-dir", str(tmp_path), "--pipc", "10"]) == 0
    png = tmp_path / "curves-val-pipc10.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dkkt_default: 2" in capsys.readouterr().out  # the DM run has no diagnostics
    assert ablation.main(["curves", "--out-dir", str(tmp_path), "--pipc", "50"]) == 1


def test_exact_solution_weight_sits_on_low_margin_points(fit_weight_decayed):
    from benchmarks.support_vectors import gradient_norms, low_margin_share

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
