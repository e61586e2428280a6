"""The grid's cross-architecture evaluation (--eval-archs): every set also trained on other
architectures, one ``archs`` entry per record, per-network resume, and the report's table."""
import json

import pytest
import torch

from benchmarks import grid, report
from benchmarks.cells import Context
from benchmarks.presets import SMOKE, EvalSpec


def _records(out):
    return [r for f in grid.results_files(out) for r in grid.read_jsonl(f)]


def test_eval_archs_evaluate_every_set_on_each_architecture(cifar_root, tmp_path, run_main):
    rc, stdout = run_main(["--preset", "smoke", "--dataset", "cifar10", "--data-root", cifar_root, "--out", tmp_path,
                           "--columns", "dm", "--eval-archs", "mlp", "convnet", "lenet", "mlp", "--threads", 1])
    assert rc == 0, stdout
    assert "also on mlp, lenet" in stdout
    (rec,) = _records(tmp_path)
    assert rec["preset"] == "smoke[archs=mlp/lenet]"  # the ConvNet is always evaluated, each name once
    assert list(rec["archs"]) == ["mlp", "lenet"] and len(rec["accuracies"]) == 1
    for fields in rec["archs"].values():
        assert len(fields["accuracies"]) == 1 and fields["eval_seeds"] == rec["eval_seeds"]
    lines = [json.loads(ln) for ln in (tmp_path / rec["run_dir"] / "evaluations.jsonl").read_text().splitlines()]
    assert [ln["arch"] for ln in lines] == ["convnet", "mlp", "lenet"]
    text = (tmp_path / "report.md").read_text()
    assert "## Accuracy (%) across architectures" in text
    assert "| ipc | pipc | method | ConvNet | MLP | LeNet |" in text


def test_unknown_eval_arch_is_one_line(cifar_root, tmp_path, capsys, run_main):
    rc, _ = run_main(["--preset", "smoke", "--dataset", "cifar10", "--data-root", cifar_root, "--out", tmp_path,
                      "--eval-archs", "resnet81"])
    err = capsys.readouterr().err
    assert rc == 2 and "--eval-archs resnet81: unknown architecture" in err and len(err.strip().splitlines()) == 1


def test_each_architecture_resumes_network_by_network(cifar_root, tmp_path):
    """Cached networks are keyed by architecture: the ConvNet's and the MLP's never mix, and lines
    written before architectures were recorded still count as the ConvNet's."""
    ctx = Context(SMOKE, "cifar10", str(cifar_root), tmp_path, device="cpu")
    spec = EvalSpec(protocol="dm", epochs=1, num_eval=2, width=4, precision="fp32", archs=("mlp",))
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(10, 3, 32, 32, generator=g), torch.arange(10)
    cache = tmp_path / "networks.jsonl"
    conv = ctx.evaluate(images, labels, 0, spec=spec, cache=cache, iteration=5)
    mlp = ctx.evaluate_archs(images, labels, 0, spec=spec, cache=cache, iteration=5)["mlp"]
    lines = grid.read_jsonl(cache, "dkkt-bench-network/1")
    assert [ln["arch"] for ln in lines] == [None, None, "mlp", "mlp"]
    assert conv.arch == "convnet" and mlp["eval_seeds"] == conv.seeds == [0, 1]
    # again: everything from the cache, nothing trained
    again = ctx.evaluate_archs(images, labels, 0, spec=spec, cache=cache, iteration=5)["mlp"]
    assert again["accuracies"] == mlp["accuracies"] and len(grid.read_jsonl(cache, "dkkt-bench-network/1")) == 4
    # a line written without "arch" (before architectures were recorded) is the ConvNet's
    old = [{k: v for k, v in ln.items() if k != "arch"} for ln in lines[:2]]
    cache.write_text("".join(json.dumps({"format": "dkkt-bench-network/1", **ln}) + "\n" for ln in old))
    assert ctx.evaluate(images, labels, 0, spec=spec, cache=cache, iteration=5).accuracies == conv.accuracies
    assert len(grid.read_jsonl(cache, "dkkt-bench-network/1")) == 2


def _rec(column, seed, conv, archs):
    return {"dataset": "fashion_mnist", "preset": "cpu[archs=mlp/resnet18]", "column": column, "ipc": 1,
            "pipc": 10, "seed": seed, "accuracies": conv,
            "archs": {a: {"accuracies": acc} for a, acc in archs.items()}}


def test_cross_architecture_table_rows_methods_columns_architectures():
    records = [_rec("dm", 0, [0.5, 0.7], {"mlp": [0.4], "resnet18": [0.3]}),
               _rec("dm", 1, [0.8], {"mlp": [0.6], "resnet18": [0.5]}),
               _rec("dm_dkkt", 0, [0.9], {"mlp": [0.7]})]
    lines, rows = report.arch_table(records, ["dm", "dm_dkkt"])
    assert lines[0] == "| ipc | pipc | method | ConvNet | MLP | ResNet18 |"
    dm = next(r for r in rows if r["column"] == "dm")["archs"]
    assert dm["convnet"]["means"] == pytest.approx([60.0, 80.0]) and dm["convnet"]["mean"] == pytest.approx(70.0)
    assert dm["convnet"]["std"] == pytest.approx(10.0) and dm["mlp"]["mean"] == pytest.approx(50.0)
    assert lines[2].startswith("| 1 | 10 | DM | 70.00 ± 10.00 (n=2) | 50.00 ± 10.00 (n=2) | 40.00 ± 10.00 (n=2) |")
    assert lines[3].endswith("| 90.00 ± 0.00 (n=1) | 70.00 ± 0.00 (n=1) | – |")
    assert report.arch_table([{**r, "archs": {}} for r in records], ["dm"]) == ([], [])


def test_report_splits_the_columns_of_grids_run_with_different_edge_models(tmp_path):
    def edge_rec(column, seed, conv, edge):
        rec = {**_rec(column, seed, conv, {"mlp": [conv[0] - 0.1]}), "format": grid.FORMAT}
        if edge:
            rec["config"] = {"edge_model": f"/models/{edge}.pt"}
            rec["edge_model"] = {"path": f"/models/{edge}.pt", "config": {"arch": edge}}
        return rec

    for folder, edge, acc in (("a", "convnet", 0.6), ("b", "resnet18", 0.5)):
        (tmp_path / folder).mkdir()
        lines = [edge_rec("dm_dkkt", s, [acc + s / 100], edge) for s in (0, 1)] + [edge_rec("dm", 0, [0.7], None)]
        (tmp_path / folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = [r for r, _ in report.load([tmp_path / "a", tmp_path / "b"])]
    assert sorted(r["column"] for r in records) == ["dm", "dm_dkkt@convnet", "dm_dkkt@convnet",
                                                    "dm_dkkt@resnet18", "dm_dkkt@resnet18"]
    lines, rows = report.arch_table(records, ["dm"])
    by = {r["column"]: r["archs"]["convnet"]["means"] for r in rows}
    assert by["dm_dkkt@convnet"] == pytest.approx([60.0, 61.0]) and by["dm_dkkt@resnet18"] == pytest.approx([50.0, 51.0])
    assert any("| DM+DKKT (resnet18 edge) |" in line for line in lines)
    # one edge model: the columns keep their names
    assert {r["column"] for r, _ in report.load([tmp_path / "a"])} == {"dm", "dm_dkkt"}
