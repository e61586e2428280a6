"""The speed benchmark runs with tiny settings, interleaves its variants and writes JSON + Markdown."""
import json

import pytest
import torch

pytest.importorskip("psutil", reason="benchmarks.speed measures memory with psutil (the bench extra)")

from benchmarks import speed
from dkkt_plugin.nets import AvgPool2x2


@pytest.mark.slow
def test_speed_tiny(tmp_path):
    argv = ["--ipc", "1", "2", "--threads", "1", "--width", "4", "--batch-real", "2", "--real-per-class", "3",
            "--rounds", "2", "--eval-epochs", "1", "--out", str(tmp_path)]
    assert speed.main(argv) == 0
    report = json.loads((tmp_path / "speed.json").read_text())
    assert [(c["threads"], c["ipc"]) for c in report["dm"]] == [(1, 1), (1, 2)]
    for cell in report["dm"] + report["eval"]:
        for name, runs in cell["runs"].items():
            assert len(runs) == 2 and all(r["seconds"] > 0 and r["cpu_seconds"] >= 0 for r in runs)
            assert all(len(pair) == 2 for pair in cell["variants"][name]["load"])
        for v in cell["variants"].values():
            assert v["gflop"] > 0 and v["peak_mb_above"] >= 0
    cell = report["dm"][0]
    assert set(cell["variants"]) == set(speed.DM_VARIANTS)
    pairs = zip(cell["runs"]["dm"], cell["runs"]["reference"])
    expect = sorted(a["seconds"] / b["seconds"] for a, b in pairs)
    assert cell["ratios"]["dm/reference"] == sum(expect) / 2  # median of two paired ratios
    assert report["command"].endswith(str(tmp_path)) and report["machine"]["cpu_model"]
    assert set(report["versions"]) == {"torch", "dkkt_plugin", "python"}
    assert report["allocator"]["preloaded"] and isinstance(report["allocator"]["env"], dict)
    assert set(report["eval"][0]["variants"]) == set(speed.EVAL_VARIANTS)
    assert report["matmul_gflops"] and all(v > 0 for v in report["matmul_gflops"].values())
    md = (tmp_path / "speed.md").read_text()
    assert "dm / reference" in md and "dm_dkkt / dm" in md and "dm_dkkt_fp32 / dm" in md and "eval_reference" in md
    assert {"dm_dkkt/dm", "dm_dkkt_fp32/dm"} <= set(cell["ratios"])
    assert report["settings"]["speed"]["dm_torch"]["backend"] == "torch"
    assert report["settings"]["speed"]["eval_fp32"]["precision"] == "fp32"


@pytest.mark.parametrize("variant,method,speed_settings", [
    ("dm", "dm", ("auto", "cpu")), ("dm_torch", "dm", ("auto", "torch")), ("dm_fp32", "dm", ("fp32", "cpu")),
    ("dm_compiled", "dm", ("auto", "compile")), ("dm_dkkt", "dm_dkkt", ("auto", "cpu")),
    ("dm_dkkt_fp32", "dm_dkkt", ("fp32", "cpu"))])
def test_dm_variants_differ_only_in_their_speed_settings(variant, method, speed_settings, monkeypatch):
    from dkkt_plugin import runtime

    seen = []

    def fake_method(name):
        def build(cfg, data, device):
            seen.append((name, cfg, (runtime.settings().precision, runtime.settings().backend)))
            return type("M", (), {"step": lambda self, it: seen.append(("step", runtime.settings().backend))})()
        return build

    monkeypatch.setattr(speed, "method_class", fake_method)
    real, labels = speed.generated_data(3)
    with runtime.use(precision="auto", backend="cpu"):
        step = speed.dm_variant(variant, 1, real, labels, batch_real=2, width=4)
        speed.dm_variant(variant, 1, real, labels, batch_real=2, width=4, counting=True)
        step()
    (name, cfg, settings), (_, counted_cfg, counted), ran = seen
    assert name == method and settings == speed_settings and ran == ("step", speed_settings[1])
    assert counted == (speed_settings[0], "torch") and counted_cfg == cfg
    assert cfg == speed.build_config(method, ipc=1, pipc="all", batch_real=2, net_width=4, iterations=1,
                                     init="noise", seed=0)  # the method's own settings: the same for all


def test_interleave_rotates_the_order():
    calls = []
    variants = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    speed.interleave(variants, rounds=3)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")


def test_reference_restatement_uses_the_reference_layers_and_per_class_forwards():
    net = speed.reference_convnet(torch.Generator().manual_seed(0), width=4)
    pools = [m for m in net.features if isinstance(m, torch.nn.AvgPool2d)]
    assert pools and not any(isinstance(m, AvgPool2x2) for m in pools)
    real, labels = speed.generated_data(3)
    ref = speed.ReferenceDM(real, labels, ipc=2, batch_real=2, generator=torch.Generator().manual_seed(0), width=4)
    sizes = []
    orig = speed.ConvNet.embed
    speed.ConvNet.embed = lambda self, x: (sizes.append(x.shape[0]), orig(self, x))[1]
    try:
        before = ref.image_syn.detach().clone()
        ref.step()
    finally:
        speed.ConvNet.embed = orig
    assert sizes == [2, 2] * speed.NUM_CLASSES  # one real and one synthetic forward per class
    assert not torch.equal(before, ref.image_syn.detach())


def test_eval_variants_train_as_the_dm_protocol(monkeypatch):
    # "eval" is the shipped evaluation training (the dm protocol, default speed settings: precision
    # auto, backend cpu); eval_fp32 exact; eval_torch torch's ops; eval_compiled torch.compile
    from dkkt_plugin import runtime
    from dkkt_plugin.evaluation import get_protocol

    seen = []
    monkeypatch.setattr(speed, "train_classifier", lambda net, x, y, cfg, generator: seen.append(
        (cfg, runtime.settings().precision, runtime.settings().backend)))
    with runtime.use(precision="auto", backend="cpu"):
        for v in ("eval", "eval_fp32", "eval_torch", "eval_compiled"):
            speed.eval_variant(v, 3, width=4)()
    assert [s[1:] for s in seen] == [("auto", "cpu"), ("fp32", "cpu"), ("auto", "torch"), ("auto", "compile")]
    assert all(cfg == get_protocol("dm", 3).train for cfg, _, _ in seen)


def test_evaluation_only_with_chosen_variants(tmp_path):
    argv = ["--ipc", "--threads", "1", "--width", "4", "--rounds", "1", "--eval-epochs", "1",
            "--eval-variants", "eval_reference", "eval", "--out", str(tmp_path)]
    assert speed.main(argv) == 0
    report = json.loads((tmp_path / "speed.json").read_text())
    assert report["dm"] == [] and set(report["eval"][0]["variants"]) == {"eval_reference", "eval"}
    assert set(report["eval"][0]["ratios"]) == {"eval/eval_reference"}
