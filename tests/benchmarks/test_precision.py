"""benchmarks.precision distils its paired sets on a tiny Fashion-MNIST and writes JSON + Markdown."""
import json

import pytest

from benchmarks import precision


@pytest.mark.parametrize("method", ["dm_dkkt", "dsv"])
def test_compare_dkkt_distils_fp32_and_bf16_dkkt_sets(method, tiny_fashion_mnist, tmp_path, monkeypatch):
    from dkkt_plugin import runtime

    built = []
    orig = precision.method_class

    def recording(name):
        cls = orig(name)
        return lambda cfg, data, device: built.append((cfg, runtime.settings())) or cls(cfg, data, device=device)

    monkeypatch.setattr(precision, "method_class", recording)
    argv = ["--compare", "dkkt", "--method", method, "--ipc", "1", "--iterations", "2", "--eval-epochs", "1",
            "--num-eval", "2", "--test-per-class", "2", "--data-root", str(tiny_fashion_mnist), "--out", str(tmp_path)]
    assert precision.main(argv) == 0
    assert [speed for _, speed in built] == [runtime.Settings("fp32", "cpu"), runtime.Settings("bf16", "cpu"),
                                             runtime.Settings("fp32", "torch")]
    assert {c.ipc for c, _ in built} == {1} and len({c for c, _ in built}) == 1  # the same method settings
    report = json.loads((tmp_path / "precision.json").read_text())
    assert report["settings"]["method"] == method and set(report["distillation"]) == {"dkkt-fp32", "dkkt-bf16",
                                                                                        "dkkt-fp32-torch"}
    assert [(c["distilled"], c["trained"]) for c in report["evaluation"]] == [
        ("dkkt-fp32", "bf16"), ("dkkt-bf16", "bf16"), ("dkkt-fp32-torch", "bf16")]
    assert all(len(c["accuracies"]) == 2 for c in report["evaluation"])
    bf16, control = report["comparisons"]
    assert bf16["changed"] == ["dkkt-bf16", "bf16"] and bf16["baseline"] == ["dkkt-fp32", "bf16"]
    assert control["changed"] == ["dkkt-fp32-torch", "bf16"] and control["baseline"] == ["dkkt-fp32", "bf16"]
    assert set(report["loss_relative_difference"]) == {"dkkt-bf16", "dkkt-fp32-torch"}
    assert all(d["first"] >= 0 for d in report["loss_relative_difference"].values())
    md = (tmp_path / "precision.md").read_text()
    assert f"DKKT term's feature pass in bf16 vs fp32 ({method})" in md and md.count("| dkkt-") == 7  # three cells, two per comparison


def test_dkkt_comparison_needs_a_dkkt_method_and_others_need_dm(capsys):
    with pytest.raises(SystemExit):
        precision.main(["--compare", "dkkt", "--method", "dm"])
    assert "--compare dkkt needs a method with the DKKT term" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        precision.main(["--compare", "backend", "--method", "dsv"])
    assert "--method dm" in capsys.readouterr().err
