"""The grid runner end to end with the smoke preset: outputs, skipping, resuming, shards, errors."""
import time
from pathlib import Path

import pytest
import torch

from benchmarks import grid
from benchmarks.presets import BLEND_COLUMN, COLUMNS
from dkkt_plugin.engine import load_synthetic

FMNIST = Path("/usr/share/datasets/fashion-mnist")
ROW_FIELDS = ("dataset", "preset", "column", "method", "ipc", "pipc", "access_ratio", "seed", "config",
              "accuracies", "mean", "eval_protocol", "distill_seconds", "seconds_per_iteration", "eval_seconds",
              "versions", "device", "machine", "date", "command", "preset_label", "cpu_sized", "run_dir")


def _records(out):
    return grid.read_jsonl(Path(out) / "results.jsonl")


def _check_smoke_records(records, dataset, access_ratio):
    assert sorted(r["column"] for r in records) == sorted([*COLUMNS, BLEND_COLUMN])
    for r in records:
        missing = [f for f in ROW_FIELDS if f not in r]
        assert not missing, missing
        assert (r["dataset"], r["preset"], r["ipc"], r["pipc"], r["seed"]) == (dataset, "smoke", 1, 10, 0)
        assert r["cpu_sized"] is True and "CPU-sized" in r["preset_label"] and "smoke" in r["preset_label"]
        assert len(r["accuracies"]) == 1 and 0.0 <= r["mean"] <= 1.0
        assert "SCALED to 10 of 1000 epochs" in r["eval_protocol"]
        assert set(r["versions"]) == {"torch", "dkkt_plugin", "python"}
        assert r["machine"]["torch_threads"] == 1 and r["device"] == "cpu"
        assert "--preset smoke" in r["command"]
        assert r["access_ratio"] == pytest.approx(access_ratio)
    by = {r["column"]: r for r in records}
    assert by["dsv_real"]["config"]["init"] == "real" and by["dsv_noise"]["config"]["init"] == "noise"
    assert by["dm"]["config"]["iterations"] == 2 and by["dc"]["config"]["iterations"] == 1
    assert by["dm"]["config"]["edge_model"] is None and by["dm_dkkt"]["config"]["edge_model"]
    assert by["dm"]["seconds_per_iteration"] > 0 and by[BLEND_COLUMN]["method"] == "blend"
    # the values that ran beside those asked for: dm_dkkt's "auto" init is noise at ipc 1, dm's real
    assert by["dm_dkkt"]["config"]["init"] == "auto" and by["dm_dkkt"]["resolved"]["init"] == "noise"
    assert by["dm"]["resolved"]["init"] == "real" and by["dm"]["resolved"]["edge_model"] == "none"
    for column in ("dm", "dm_dkkt", "dc", "dsv_noise"):
        assert "auto" not in by[column]["resolved"].values(), by[column]["resolved"]
    for column in ("dm", "dsv_noise", "dm_dkkt"):  # fidelity measures, the transfer model trained once
        fid = by[column]["fidelity"]
        assert 0.0 <= fid["high_frequency_share"] <= 1.0 and 0.0 <= fid["transfer_accuracy"] <= 1.0
        assert by[column]["transfer_model"].endswith(("transfer_model.pt", "fmnist_transfer.pt"))
    assert "edge_accuracy" in by["dsv_noise"]["fidelity"] and "edge_accuracy" not in by["dm"]["fidelity"]


def test_smoke_end_to_end_on_cifar_format(smoke_run):
    rc, stdout, out = smoke_run
    assert rc == 0, stdout
    records = _records(out)
    _check_smoke_records(records, "cifar10", 100 * 100 / 200)  # 10 of 20 images per class
    assert "CPU-sized" in stdout and "preset 'smoke'" in stdout
    for r in records:
        assert (out / r["run_dir"] / "synthetic.pt").is_file()
    blend = load_synthetic(out / next(r["run_dir"] for r in records if r["column"] == BLEND_COLUMN))
    dm, dsv = (load_synthetic(out / f"runs/smoke/{c}/ipc1-pipc10-seed0") for c in ("dm", "dsv_noise"))
    torch.testing.assert_close(blend["images"], (dm["images"] + dsv["images"]) / 2)
    assert (out / "edge_model.pt").is_file()
    report = (out / "report.md").read_text()
    assert "CPU-sized" in report and "| 1 | 10 |" in report


def test_rerun_skips_finished_cells(smoke_run, cifar_root, run_main):
    _, _, out = smoke_run
    before = (out / "results.jsonl").read_text()
    t0 = time.perf_counter()
    rc, stdout = run_main(["--preset", "smoke", "--dataset", "cifar10", "--data-root", cifar_root, "--out", out,
                           "--no-report"])
    assert rc == 0
    assert stdout.count("finished, skipped") == len(COLUMNS) + 1  # and the blend
    assert (out / "results.jsonl").read_text() == before
    assert time.perf_counter() - t0 < 20


def test_interrupted_cell_resumes_from_its_checkpoint(cifar_root, tmp_path, monkeypatch, run_main):
    from dkkt_plugin.methods.dm import DM

    step = DM.step

    def interrupted(self, iteration):
        if iteration == 2:
            raise KeyboardInterrupt
        return step(self, iteration)

    argv = ["--preset", "smoke", "--dataset", "cifar10", "--data-root", cifar_root, "--out", tmp_path,
            "--columns", "dm", "--iterations", "4", "--no-report"]
    monkeypatch.setattr(DM, "step", interrupted)
    assert run_main(argv)[0] == 130
    (ckpt,) = tmp_path.glob("runs/*/dm/ipc1-pipc10-seed0/checkpoint.pt")  # runs/<preset>/: not mixed with smoke's
    assert ckpt.parts[-4] != "smoke"
    assert torch.load(ckpt, weights_only=True)["iteration"] == 2
    assert not (tmp_path / "results.jsonl").exists()
    monkeypatch.setattr(DM, "step", step)
    rc, stdout = run_main(argv)
    assert rc == 0, stdout
    (rec,) = _records(tmp_path)
    assert rec["resumed"] is True and rec["iterations"] == 4 and rec["preset"] == "smoke[iterations=4]"
    assert torch.load(ckpt, weights_only=True)["iteration"] == 4


@pytest.mark.slow
def test_shards_and_merge_give_the_unsharded_keys(cifar_root, tmp_path, run_main):
    common = ["--preset", "smoke", "--dataset", "cifar10", "--data-root", cifar_root, "--columns", "dm", "dc",
              "--seeds", "0", "1", "--no-report"]
    assert run_main([*common, "--out", tmp_path / "whole"])[0] == 0
    for i in (0, 1):
        rc, stdout = run_main([*common, "--out", tmp_path / "sharded", "--shard", f"{i}/2"])
        assert rc == 0 and "shard 0/1" not in stdout
        assert len(grid.read_jsonl(tmp_path / "sharded" / f"results.shard-{i}-of-2.jsonl")) == 2
    assert run_main(["merge", tmp_path / "sharded"])[0] == 0
    whole = {grid.record_key(r) for r in _records(tmp_path / "whole")}
    merged = _records(tmp_path / "sharded")
    assert len(whole) == 4 and {grid.record_key(r) for r in merged} == whole and len(merged) == 4
    rc, stdout = run_main([*common, "--out", tmp_path / "sharded"])  # the merged grid is complete
    assert rc == 0 and stdout.count("finished, skipped") == 4


def test_missing_cifar_is_a_one_line_error(tmp_path, monkeypatch, capsys, run_main):
    monkeypatch.delenv("DKKT_CIFAR10_ROOT", raising=False)
    for extra in ([], ["--data-root", tmp_path / "nowhere"]):
        rc, _ = run_main(["--dataset", "cifar10", "--preset", "smoke", "--out", tmp_path / "out", *extra])
        err = capsys.readouterr().err
        assert rc == 2
        assert "DKKT_CIFAR10_ROOT" in err and "--data-root" in err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_default_presets_and_listing(tmp_path, monkeypatch, run_main):
    monkeypatch.delenv("DKKT_CIFAR10_ROOT", raising=False)  # listing needs no data
    rc, stdout = run_main(["--dataset", "cifar10", "--out", tmp_path, "--list"])
    assert rc == 0 and "preset 'paper'" in stdout and "CPU-sized" not in stdout
    assert stdout.count("seed") == 5 * 63 + 5 * 4  # Table 1's cells and blends, 5 seeds


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(), reason="Debian Fashion-MNIST missing")
def test_smoke_on_real_fashion_mnist(tmp_path, run_main):
    rc, stdout = run_main(["--preset", "smoke", "--out", tmp_path, "--threads", 1])
    assert rc == 0, stdout
    records = _records(tmp_path)
    _check_smoke_records(records, "fashion_mnist", 100 * 100 / 60000)
    # the packaged models, nothing pretrained
    assert records[0]["edge_model"]["test_accuracy"] == pytest.approx(0.9076)
    assert records[0]["edge_model"]["path"].endswith("fmnist_edge.pt")
    assert {r["transfer_model"] for r in records if r.get("transfer_model")} == {
        str(__import__("dkkt_plugin.demo", fromlist=["x"]).packaged_transfer_model())}
    assert not (tmp_path / "edge_model.pt").exists() and not (tmp_path / "transfer_model.pt").exists()
