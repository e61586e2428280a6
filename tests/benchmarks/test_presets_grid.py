"""Presets follow the paper's table; cells, keys, shards and JSONL merging behave."""
import functools
import json

import pytest
from scipy import stats

from benchmarks import grid
from benchmarks.presets import ABLATION, ABLATION_VARIANTS, COLUMNS, CPU, DSV_COLUMNS, PAPER, PRESETS, SMOKE, get_preset
from dkkt_plugin.errors import ConfigError
from dkkt_plugin.evaluation import get_protocol


def test_paper_preset_is_table_1():
    assert [(ipc, tuple(p)) for ipc, p in PAPER.rows] == [
        (1, (10, 50, "all")), (3, (10, 50, "all")), (10, (10, 50, "all")), (50, (50, "all"))]
    assert PAPER.seeds == (0, 1, 2, 3, 4) and not PAPER.cpu_sized
    for column in ("dm", "dm_star", "dsv_noise", "dsv_real", "dm_dkkt"):
        assert PAPER.method_overrides(column, 10)[1]["iterations"] == 20000
    for column in ("dc", "dsa"):
        assert PAPER.method_overrides(column, 10)[1]["iterations"] == 1000
    assert PAPER.evaluation.protocol == "paper" and PAPER.evaluation.epochs is None
    assert get_protocol(PAPER.evaluation.protocol).train.epochs == 5000
    assert get_protocol(PAPER.evaluation.protocol).train.optimizer == "sam"


TABLE_PRESETS = [p for p in PRESETS.values() if p.reference is None and not p.budgets]  # the paper's whole table


@pytest.mark.parametrize("preset", TABLE_PRESETS, ids=[p.name for p in TABLE_PRESETS])
def test_dsv_columns_only_at_the_smallest_pipc_of_each_ipc(preset):
    for ipc, pipcs in preset.rows:
        for pipc in pipcs:
            has_dsv = set(DSV_COLUMNS) <= set(preset.columns_for(ipc, pipc))
            assert has_dsv == (pipc == (50 if ipc == 50 else 10)), (ipc, pipc)
            assert set(preset.columns_for(ipc, pipc)) - set(DSV_COLUMNS) == set(COLUMNS) - set(DSV_COLUMNS)


def test_cell_counts_and_labels():
    assert len(grid.build_cells(PAPER, "cifar10", seeds=[0])) == 3 * (3 * 5 + 2) + (2 * 5 + 2)
    assert len(grid.build_cells(CPU, "fashion_mnist")) == 2 * (3 * 5 + 2) * 3  # ipc 1 and 10, 3 seeds
    smoke = grid.build_cells(SMOKE, "cifar10")
    assert sorted(c.column for c in smoke) == sorted(COLUMNS)
    assert [c.column for c in grid.blend_cells(SMOKE, smoke)] == ["blend_dsv_dm"]
    for preset in (CPU, SMOKE):
        assert preset.cpu_sized and "CPU-sized" in preset.label and preset.name in preset.label
    assert "CPU-sized" not in PAPER.label
    with pytest.raises(ConfigError, match="no ipc 2 row"):
        grid.build_cells(PAPER, "cifar10", ipcs=[2])
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("gpu")


def test_cpu_preset_is_scaled_per_ipc():
    assert CPU.method_overrides("dm", 1)[1]["iterations"] == 200
    assert CPU.method_overrides("dm_dkkt", 10)[1]["iterations"] == 50
    method, over = CPU.method_overrides("dsa", 10)
    assert method == "dsa" and (over["outer_loop"], over["inner_loop"]) == (2, 5) and over["iterations"] == 3
    assert CPU.method_overrides("dsv_real", 1) == ("dsv", {"batch_real": 16, "init": "real", "iterations": 1000})
    assert CPU.method_overrides("dsv_noise", 10)[1]["iterations"] == 50  # DSV gets its 1000 steps at ipc 1 only


def test_modified_preset_gets_its_own_name():
    mod = SMOKE.modified(iterations=1, eval_epochs=3)
    assert mod.name == "smoke[eval_epochs=3,iterations=1]"
    assert mod.method_overrides("dc", 1)[1]["iterations"] == 1 and mod.evaluation.epochs == 3
    assert SMOKE.modified() is SMOKE


def test_shards_partition_the_cells():
    cells = grid.build_cells(CPU, "fashion_mnist")
    parts = [grid.shard(cells, i, 4) for i in range(4)]
    keys = [c.key for part in parts for c in part]
    assert sorted(keys) == sorted(c.key for c in cells) and len(set(keys)) == len(keys)
    assert parts == [grid.shard(cells, i, 4) for i in range(4)]  # deterministic
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_parse_shard():
    assert grid.parse_shard("3/8") == (3, 8)
    assert grid.parse_shard("env", {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2"}) == (1, 2)
    for bad in ("2/2", "1", "a/b", "-1/2"):
        with pytest.raises(ConfigError, match="i/n"):
            grid.parse_shard(bad)
    with pytest.raises(ConfigError, match="RANK"):
        grid.parse_shard("env", {})


def _rec(column, seed, date, mean=0.5):
    return {"dataset": "cifar10", "preset": "paper", "column": column, "ipc": 1, "pipc": 10, "seed": seed,
            "accuracies": [mean], "date": date}


def test_merge_dedupes_by_key_keeping_the_latest(tmp_path):
    for name, recs in (("a.jsonl", [_rec("dm", 0, "2026-01-01", 0.1), _rec("dm", 1, "2026-01-01")]),
                       ("b.jsonl", [_rec("dm", 0, "2026-02-01", 0.9), _rec("dc", 0, "2026-01-01")])):
        for r in recs:
            grid.append_jsonl(tmp_path / name, r)
    with open(tmp_path / "a.jsonl", "a") as fh:
        fh.write('{"format": "dkkt-bench/1", "dataset": "cif')  # a line cut short by a crash
    read, written = grid.merge([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "m.jsonl")
    assert (read, written) == (4, 3)
    merged = grid.read_jsonl(tmp_path / "m.jsonl")
    assert {grid.record_key(r) for r in merged} == {("cifar10", "paper", c, 1, "10", s)
                                                   for c, s in (("dm", 0), ("dm", 1), ("dc", 0))}
    assert [r["accuracies"] for r in merged if r["column"] == "dm" and r["seed"] == 0] == [[0.9]]
    assert json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])["format"] == grid.FORMAT
    assert grid.merge([tmp_path], tmp_path / "m.jsonl")[1] == 3  # merging again changes nothing


@pytest.mark.parametrize("preset", list(PRESETS.values()), ids=list(PRESETS))
def test_every_column_of_every_preset_builds_its_config(preset):
    from dkkt_plugin.engine import build_config

    for ipc, pipcs in preset.rows:
        for pipc in pipcs:
            for column in preset.columns_for(ipc, pipc):
                method, overrides = preset.method_overrides(column, ipc)
                cfg = build_config(method, overrides, ipc=ipc, pipc=pipc)
                for key, value in overrides.items():  # dotted keys: "dkkt.distance" is cfg.dkkt.distance
                    assert functools.reduce(getattr, key.split("."), cfg) == value, (preset.name, column, key)


def test_ablation_preset_is_the_old_runners_protocol():
    assert list(ABLATION.columns) == list(ABLATION_VARIANTS) and ABLATION.reference == "dm"
    assert ABLATION.rows == ((1, (10, 50)), (10, (10, 50))) and ABLATION.default_ipcs == (1,)
    assert ABLATION.seeds == (0, 1, 2) and ABLATION.cpu_sized
    spec = ABLATION.evaluation
    assert (spec.protocol, spec.epochs, spec.num_eval, spec.width, spec.split, spec.seed_stride) == (
        "dm", 300, 2, 128, "val", 1)
    assert all(ABLATION.method_overrides(v, 1)[1]["iterations"] == 200 for v in ABLATION_VARIANTS)
    assert "batch_real" not in ABLATION.method_overrides("dm", 1)[1]  # the methods' own default, as before
    cells = grid.build_cells(ABLATION, "fashion_mnist")
    assert len(cells) == 2 * len(ABLATION_VARIANTS) * 3  # every variant at pipc 10 and 50 (DSV included)
    assert grid.blend_cells(ABLATION, cells) == []
    with pytest.raises(ConfigError, match="has no column.*dm_star"):
        grid.build_cells(ABLATION, "fashion_mnist", columns=["dm_star"])


def test_split_override_renames_the_preset_unless_it_is_the_presets_own():
    assert ABLATION.modified(split="val") is ABLATION
    test = ABLATION.modified(split="test")
    assert test.name == "ablation[split=test]" and test.evaluation.split == "test"
    assert CPU.modified(split="val").evaluation.split == "val"
    with pytest.raises(ConfigError, match="split"):
        CPU.modified(split="train")


def test_cpu_presets_pin_fp32_evaluation_and_a_precision_change_renames():
    # committed CPU results were evaluated in fp32: their presets keep it, so reruns reproduce them
    # and a preset's cells never mix precisions; the GPU preset uses the protocol's own (auto)
    assert {p.name: p.evaluation.precision for p in (CPU, SMOKE, ABLATION, PAPER)} == {
        "cpu": "fp32", "smoke": "fp32", "ablation": "fp32", "paper": None}
    assert CPU.modified(precision="fp32") is CPU
    auto = CPU.modified(precision="auto")
    assert auto.name == "cpu[precision=auto]" and auto.evaluation.precision == "auto"


def test_run_passes_eval_precision_to_the_preset(tmp_path):
    from benchmarks import run

    for flag, name in ((["--eval-precision", "auto"], "smoke[precision=auto]"), ([], "smoke")):
        args = run.build_parser("grid").parse_args(["--preset", "smoke", "--out", str(tmp_path), *flag])
        ctx = run._context(args, "python -m benchmarks.run", check_data=False)
        assert ctx.preset.name == name


def test_term_sweep_compares_each_variant_with_its_own_host_on_the_validation_split():
    from benchmarks.presets import TERM_SWEEP

    assert TERM_SWEEP.evaluation.split == "val" and TERM_SWEEP.evaluation.epochs is None
    assert TERM_SWEEP.reference["dsa_dkkt_f0.1"] == "dsa" and TERM_SWEEP.reference["dm_dkkt_f0.03"] == "dm"
    method, over = TERM_SWEEP.method_overrides("dc_dkkt_f0.3", 10)
    assert method == "dc_dkkt" and over["dkkt.balance_fraction"] == 0.3
    assert (over["outer_loop"], over["inner_loop"], over["iterations"]) == (2, 5, 50)
    assert TERM_SWEEP.method_overrides("dm_dkkt_f0.1", 1)[1]["dkkt.balance"] == "grad"
    assert "outer_loop" not in TERM_SWEEP.method_overrides("dc", 1)[1]  # ipc 1: the reference's 1/1


def test_term_test_runs_the_package_defaults_against_each_host_on_the_test_split():
    from benchmarks.presets import TERM_TEST
    from dkkt_plugin.engine import build_config

    assert TERM_TEST.evaluation.split == "test" and TERM_TEST.seeds == (0, 1, 2, 3, 4)
    assert TERM_TEST.reference == {"dm_dkkt_grad": "dm", "dc_dkkt": "dc", "dsa_dkkt": "dsa"}
    method, over = TERM_TEST.method_overrides("dm_dkkt_grad", 1)
    assert method == "dm_dkkt" and over["dkkt.balance"] == "grad" and "dkkt.balance_fraction" not in over
    cfg = build_config(method, over, ipc=1, pipc=10)
    assert cfg.dkkt.balance == "grad"  # the fraction is the package default, whatever it is
    method, over = TERM_TEST.method_overrides("dsa_dkkt", 10)
    assert method == "dsa_dkkt" and (over["outer_loop"], over["inner_loop"], over["iterations"]) == (2, 5, 50)


def test_variant_table_with_a_host_per_variant():
    from benchmarks.report import variant_table

    cell = lambda means, seeds=(0, 1, 2): {"seeds": list(seeds), "means": means,  # noqa: E731
                                           "mean": sum(means) / len(means), "std": 0.0, "n": len(means),
                                           "stat_ratio": []}
    table = {(1, 10): {"dc": cell([50.0, 51.0, 49.0]), "dc_x": cell([51.0, 53.0, 50.0]),
                       "dm": cell([70.0, 70.5, 71.0]), "dm_x": cell([70.5, 71.0], seeds=(2, 0))}}
    lines, tests = variant_table(table, ["dc", "dc_x", "dm", "dm_x"], {"dc_x": "dc", "dm_x": "dm"})
    assert "p vs its host" in lines[0] and "paired Δ (p, n)" in lines[0]
    assert {(t["column"], t["reference"]) for t in tests} == {("dc_x", "dc"), ("dm_x", "dm")}
    by = {t["column"]: t for t in tests}
    # dc_x - dc per seed: +1, +2, +1 -> mean 4/3; paired t = mean / (sd / sqrt 3) with sd 1/sqrt 3 -> t 4
    assert by["dc_x"]["paired_difference"] == pytest.approx(4 / 3) and by["dc_x"]["paired_n"] == 3
    assert by["dc_x"]["paired_p"] == pytest.approx(2 * stats.t.sf(4.0, df=2))
    # dm_x holds seeds 2 and 0 only, paired with dm's seeds 0 and 2: (71.0 - 70.0), (70.5 - 71.0)
    assert by["dm_x"]["paired_n"] == 2 and by["dm_x"]["paired_difference"] == pytest.approx(0.25)
    assert "+1.33 (" in next(line for line in lines if line.startswith("| dc_x |"))
