"""The speed benchmark runs with tiny settings and writes JSON + Markdown with the ratios."""
import json

from benchmarks import speed


def test_speed_tiny(tmp_path, capsys):
    argv = ["--ipc", "1", "2", "--shapes", "fmnist", "--width", "4", "--batch-real", "2", "--repeats", "2",
            "--warmup", "1", "--threads", "1", "--device", "cpu", "--out", str(tmp_path)]
    assert speed.main(argv) == 0
    report = json.loads((tmp_path / "speed.json").read_text())
    steps = {(r["shape"], r["ipc"], r["step"]) for r in report["results"]}
    assert steps == {("fmnist", ipc, s) for ipc in (1, 2) for s in speed.STEPS}
    for r in report["results"]:
        assert r["seconds"] > 0 and len(r["all_seconds"]) == 2 and r["peak_memory_mb"] >= 0
    by = {(r["shape"], r["ipc"], r["step"]): r["seconds"] for r in report["results"]}
    for ratio in report["ratios"]:
        key = (ratio["shape"], ratio["ipc"])
        assert ratio["dm_batched_speedup"] == by[(*key, "dm_per_class")] / by[(*key, "dm")]
        assert ratio["dm_dkkt_over_dm"] == by[(*key, "dm_dkkt")] / by[(*key, "dm")]
        assert ratio["dkkt_over_dm"] > 0 and ratio["dc_over_dm"] > 0
    assert report["device"] == "cpu" and report["threads"] == 1
    assert ("psutil" in report["memory_method"]) or ("ru_maxrss" in report["memory_method"])
    assert set(report["versions"]) == {"torch", "dkkt_plugin", "python"} and report["command"].endswith(str(tmp_path))
    md = (tmp_path / "speed.md").read_text()
    assert "batched speed-up (per-class / batched)" in md and "DM+DKKT / DM" in md
    assert md.count("| fmnist |") == 2


def test_per_class_step_really_is_per_class():
    run = speed.make_step("dm_per_class", speed.SHAPES["cifar"], 1, batch_real=2, width=4, device=speed.torch.device("cpu"))
    assert run.__self__.dm.batched is False
    assert speed.make_step("dm", speed.SHAPES["cifar"], 1, batch_real=2, width=4,
                           device=speed.torch.device("cpu")).__self__.dm.batched is True
