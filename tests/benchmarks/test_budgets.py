"""Evaluations along one trajectory: budgets, the random column, the reproduce preset's order."""
import json

import pytest
import torch

from benchmarks import grid
from benchmarks.presets import REPRODUCE, get_preset


def test_reproduce_cells_put_the_ipc1_pipc10_budgets_first_and_the_paper_protocol_at_final_budgets():
    cells = grid.build_cells(REPRODUCE, "fashion_mnist")
    first = cells[:65]
    assert {(c.ipc, str(c.pipc)) for c in first} == {(1, "10")}
    assert {c.budget for c in first} == {0, 200, 1000, 5000} and {c.protocol for c in first} == {"dm"}
    assert [c.budget for c in first] == sorted(c.budget for c in first)  # budget-major
    paper = [c for c in cells if c.protocol == "paper"]
    assert {(c.column, c.budget) for c in paper if c.ipc == 1} == {
        ("random", 0), ("dm", 20000), ("dm_dkkt", 20000), ("dsv_noise", 5000), ("blend_dsv_dm", 5000)}
    assert {(c.column, c.budget) for c in paper if c.ipc == 10} == {
        ("random", 0), ("dm", 5000), ("dm_dkkt", 5000), ("dsv_noise", 5000), ("blend_dsv_dm", 5000)}
    assert {str(c.pipc) for c in paper} == {"10"}
    assert max(c.budget for c in cells if (c.ipc, str(c.pipc)) != (1, "10")) == 5000
    assert all(c.budget == 0 for c in cells if c.column == "random")
    keys = [c.key for c in cells]
    assert len(keys) == len(set(keys))


def test_eval_at_needs_a_preset_with_budgets_and_positive_iterations(run_main, capsys, tmp_path):
    assert run_main(["--preset", "smoke", "--eval-at", "2", "--out", tmp_path, "--list"])[0] == 2
    assert "--eval-at needs a preset with budgets" in capsys.readouterr().err
    assert run_main(["--preset", "reproduce", "--eval-at", "0", "--out", tmp_path, "--list"])[0] == 2
    assert "positive iterations" in capsys.readouterr().err


@pytest.fixture(scope="module")
def budget_run(cifar_root, tmp_path_factory):
    from tests.benchmarks.conftest import _run_main

    out = tmp_path_factory.mktemp("budgets")
    argv = ["--preset", "reproduce", "--dataset", "cifar10", "--data-root", cifar_root, "--out", out,
            "--eval-at", 2, 4, "--eval-epochs", 1, "--num-eval", 2, "--seeds", 0, "--ipc", 1, "--pipc", 10,
            "--threads", 1, "--no-report"]
    rc, stdout = _run_main(argv)
    return rc, stdout, out, argv


def test_every_budget_and_protocol_gets_its_line_and_each_run_keeps_its_sets(budget_run):
    rc, _, out, _ = budget_run
    assert rc == 0
    recs = grid.read_jsonl(out / "results.jsonl")
    points = sorted((r["column"], r["budget"], r["protocol"]) for r in recs)
    assert points == sorted([("random", 0, "dm"), ("random", 0, "paper")]
                            + [(c, b, "dm") for c in ("dm", "dm_dkkt", "dsv_noise", "blend_dsv_dm") for b in (2, 4)]
                            + [(c, 4, "paper") for c in ("dm", "dm_dkkt", "dsv_noise", "blend_dsv_dm")])
    for r in recs:
        assert len(r["accuracies"]) == (2 if r["protocol"] == "dm" else 1)
        assert r["eval_protocol"].startswith(r["protocol"])
    runs = out / "runs" / "reproduce_eval_at=2_4,eval_epochs=1,num_eval=2_"
    dm = runs / "dm" / "ipc1-pipc10-seed0"
    assert sorted(p.name for p in (dm / "snapshots").iterdir()) == ["it2.pt", "it4.pt"]
    assert [e["iteration"] for e in map(json.loads, (dm / "evaluations.jsonl").read_text().splitlines())] == [2, 4, 4]
    record = json.loads((dm / "record.json").read_text())
    assert [(i["from"], i["to"]) for i in record["invocations"]] == [(0, 2), (2, 4)]


def test_a_snapshot_is_the_set_a_run_of_that_budget_gives(budget_run, tmp_path):
    from dkkt_plugin.engine import build_config, load_synthetic, run_distillation

    _, _, out, _ = budget_run
    dm = out / "runs" / "reproduce_eval_at=2_4,eval_epochs=1,num_eval=2_" / "dm" / "ipc1-pipc10-seed0"
    cfg = load_synthetic(dm / "snapshots" / "it2.pt")["config"]
    fresh = run_distillation("dm", build_config("dm", _flat(cfg)), tmp_path / "fresh", checkpoint_every=1)
    assert torch.equal(fresh.images, load_synthetic(dm / "snapshots" / "it2.pt")["images"])


def _flat(cfg: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return flat


def test_a_rerun_runs_nothing_and_status_says_how_far_each_run_is(budget_run, run_main):
    _, _, out, argv = budget_run
    before = (out / "results.jsonl").read_text()
    rc, stdout = run_main(argv)
    assert rc == 0 and stdout.count("finished, skipped") == 14
    assert (out / "results.jsonl").read_text() == before
    rc, status = run_main(["status", *argv[:-1]])
    assert rc == 0 and "14 done" in status
    assert "dm/ipc1-pipc10-seed0: iteration 4 of 4 (100 %); sets kept at 2, 4" in status


def test_an_interrupted_evaluation_resumes_at_the_next_network(cifar_root, tmp_path, run_main):
    from benchmarks.cells import NETWORKS, NETWORKS_FORMAT

    argv = ["--preset", "reproduce", "--dataset", "cifar10", "--data-root", cifar_root, "--out", tmp_path,
            "--eval-at", 2, "--eval-epochs", 1, "--num-eval", 2, "--seeds", 0, "--ipc", 1, "--pipc", 10,
            "--columns", "random", "--threads", 1, "--no-report"]
    spec = get_preset("reproduce").modified(eval_at=[2], eval_epochs=1, num_eval=2).evaluation
    run = tmp_path / "runs" / "reproduce_eval_at=2,eval_epochs=1,num_eval=2_" / "random" / "ipc1-pipc10-seed0"
    fake = {"iteration": 0, "spec": {k: v for k, v in spec.__dict__.items() if k != "num_eval"}, "seed": 0,
            "accuracy": 0.777, "protocol": "dm protocol (an earlier process)", "seconds": 1.0}
    grid.append_jsonl(run / NETWORKS, fake, fmt=NETWORKS_FORMAT)
    assert run_main(argv)[0] == 0
    (rec,) = [r for r in grid.read_jsonl(tmp_path / "results.jsonl") if r["protocol"] == "dm"]
    assert rec["accuracies"][0] == 0.777 and rec["eval_seeds"] == [0, 1]  # network 0 reused, network 1 trained
    assert len(grid.read_jsonl(run / NETWORKS, NETWORKS_FORMAT)) == 3  # + network 1, + the paper protocol's


def test_a_run_past_its_budget_without_its_set_fails_that_cell_clearly(cifar_root, tmp_path, run_main, capsys):
    argv = ["--preset", "reproduce", "--dataset", "cifar10", "--data-root", cifar_root, "--out", tmp_path,
            "--eval-at", 2, 3, "--eval-epochs", 1, "--num-eval", 1, "--seeds", 0, "--ipc", 1, "--pipc", 10,
            "--columns", "dm", "--threads", 1, "--no-report"]
    assert run_main(argv)[0] == 0
    run = tmp_path / "runs" / "reproduce_eval_at=2_3,eval_epochs=1,num_eval=1_" / "dm" / "ipc1-pipc10-seed0"
    (run / "snapshots" / "it2.pt").unlink()
    (tmp_path / "results.jsonl").unlink()
    assert run_main(argv)[0] == 1
    assert "is at iteration 3, past 2, and kept no set at 2" in capsys.readouterr().err
    assert sorted(r["budget"] for r in grid.read_jsonl(tmp_path / "results.jsonl")) == [3, 3]  # dm and paper


def test_a_snapshot_missing_at_the_checkpoint_is_written_again_without_distilling(cifar_root, tmp_path, run_main):
    argv = ["--preset", "reproduce", "--dataset", "cifar10", "--data-root", cifar_root, "--out", tmp_path,
            "--eval-at", 2, "--eval-epochs", 1, "--num-eval", 1, "--seeds", 0, "--ipc", 1, "--pipc", 10,
            "--columns", "dm", "--threads", 1, "--no-report"]
    assert run_main(argv)[0] == 0
    run = tmp_path / "runs" / "reproduce_eval_at=2,eval_epochs=1,num_eval=1_" / "dm" / "ipc1-pipc10-seed0"
    snap = (run / "snapshots" / "it2.pt").read_bytes()
    record = (run / "record.json").read_text()
    (run / "snapshots" / "it2.pt").unlink()
    (tmp_path / "results.jsonl").unlink()
    assert run_main(argv)[0] == 0
    assert (run / "snapshots" / "it2.pt").read_bytes() == snap and (run / "record.json").read_text() == record


def test_the_report_has_a_verdict_a_table_per_protocol_and_the_figures(budget_run, tmp_path):
    pytest.importorskip("matplotlib", reason="figures need the bench extra (matplotlib)")
    from benchmarks import report

    _, _, out, _ = budget_run
    assert report.main([str(out), "--out-dir", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "## Verdict" in text and "### ipc 1, pipc 10: dm protocol (2 network(s)" in text
    assert "### ipc 1, pipc 10: paper protocol (1 network(s)" in text
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "accuracy_vs_iterations_ipc1_pipc10_dm.png", "accuracy_vs_iterations_ipc1_pipc10_paper.png",
        "sets_by_budget_ipc1_pipc10_seed0.png"]
    # a sets figure drawn earlier, whose run folders are gone, stays linked
    (tmp_path / "figures" / "sets_by_budget_ipc1_pipc50_seed3.png").write_bytes(b"png")
    assert report.main([str(out), "--out-dir", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "](figures/sets_by_budget_ipc1_pipc10_seed0.png)" in text
    assert "![sets at every budget, drawn earlier](figures/sets_by_budget_ipc1_pipc50_seed3.png)" in text
