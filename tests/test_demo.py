import pytest
"""`dkkt demo` runs from the packaged assets alone (tiny settings here; the real demo is longer)."""
import re

import torch

from dkkt_plugin.cli import main
from dkkt_plugin.engine import read_evaluations
from dkkt_plugin.demo import EDGE, PRACTICAL, TEST, asset_path, load_images
from dkkt_plugin.pretrain import load_edge_model


def test_assets_are_what_they_claim():
    model, meta = load_edge_model(asset_path(EDGE))
    assert meta["dataset"] == "fashion_mnist" and meta["num_train"] == 60000
    assert meta["command"].startswith("dkkt pretrain") and meta["test_accuracy"] > 0.85
    x, y, practical = load_images(PRACTICAL)
    assert x.shape == (100, 1, 28, 28) and torch.bincount(y).tolist() == [10] * 10
    assert practical["pipc"] == 10 and 0.16 < practical["access_ratio"] < 0.17
    tx, ty, _ = load_images(TEST)
    assert torch.bincount(ty).tolist() == [200] * 10
    with torch.no_grad():
        assert (model(tx).argmax(1) == ty).float().mean() > 0.85  # the edge model is really trained


@pytest.mark.slow
def test_demo_runs_and_reports(tmp_path, capsys):
    from dkkt_plugin.runtime import native_bf16

    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--iterations", "2", "--dsv-iterations", "2", "--eval-epochs", "2",
            "--num-eval", "1", "--device", "cpu", "--threads", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "CPU-sized" in text and "SCALED to 2 of 1000 epochs" in text
    # the header says which precision ran and names the edge model, not a path
    assert "where the device has native bf16, else fp32" not in text and "threads: 1" in text
    ran = "bf16 autocast" if native_bf16("cpu") else "fp32"
    assert f"precision: {ran}" in text
    assert (", bf16 autocast training," if ran != "fp32" else ", fp32 training,") in text
    [edge_line] = [line for line in text.splitlines() if line.startswith("edge model:")]
    assert edge_line.startswith("edge model: fmnist (") and "/" not in edge_line
    rows = dict(re.findall(r"^\| (\w+) \| (\d+\.\d+) ± \d+\.\d+ \|", text, flags=re.M))
    assert sorted(rows) == ["dm", "dm_dkkt", "dsv"]  # the table has every method, each with a number
    for method, accuracy in rows.items():
        assert 0.0 <= float(accuracy) <= 100.0
        assert (out / method / "synthetic.png").is_file()
        [ev] = read_evaluations(out / method)
        assert abs(100 * ev["mean"] - float(accuracy)) < 0.006 and len(ev["accuracies"]) == 1

    # the same folder again: refused without --resume, nothing touched; continued with it
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "already holds a demo run" in err and "--resume" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main([*args, "--resume"]) == 0
    for method in rows:
        assert len(read_evaluations(out / method)) == 2  # evaluated again, the first evaluation kept


def test_demo_refuses_a_folder_that_holds_a_run_before_any_work(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "dm_dkkt").mkdir(parents=True)
    (out / "dm_dkkt" / "record.json").write_text("{}")
    assert main(["demo", "--out", str(out), "--iterations", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"dkkt demo: error: {out} already holds a demo run (dm_dkkt/): pass --resume to continue "
                           "it, or choose another --out (it is never overwritten)")
    assert sorted(p.name for p in out.rglob("*")) == ["dm_dkkt", "record.json"]
