"""The report: the paper's table layout, Welch t-tests checked against scipy, figures, spectra."""
import json

import numpy as np
import pytest
from scipy import stats

from benchmarks import grid, report

PNG = b"\x89PNG\r\n\x1a\n"
HEADER = "| ipc | pipc | access % | DM | DM* | DC | DSA | DSV(noise) | DSV(real) | DM+DKKT | (DSV+DM)/2 |"
# (ipc, pipc, access %) -> column -> per-seed centre of the accuracies (%): DC best at pipc 50
ROWS = {
    (1, 10, 0.2): {"dm": 22, "dm_star": 23, "dc": 19, "dsa": 21, "dsv_noise": 25, "dsv_real": 17,
                   "dm_dkkt": 26, "blend_dsv_dm": 24},
    (1, 50, 1.0): {"dm": 24, "dm_star": 25, "dc": 27, "dsa": 26, "dm_dkkt": 28},
    (1, "all", 100.0): {"dm": 26, "dm_star": 27, "dc": 28, "dsa": 29, "dm_dkkt": 29.5},
}
SEEDS = (0, 1, 2)


def _write(path, preset="paper", cpu_sized=False):
    rng = np.random.default_rng(0)
    accs = {}
    for (ipc, pipc, ratio), cols in ROWS.items():
        for column, centre in cols.items():
            for seed in SEEDS:
                acc = list((centre + rng.normal(0, 1, size=2)) / 100)  # 2 evaluation runs per seed
                accs[(ipc, pipc, column, seed)] = acc
                grid.append_jsonl(path, {
                    "dataset": "cifar10", "preset": preset, "column": column, "ipc": ipc, "pipc": pipc,
                    "access_ratio": ratio, "seed": seed, "accuracies": acc, "mean": float(np.mean(acc)),
                    "eval_protocol": "paper protocol: SAM", "machine": {"cpu_count": 2},
                    "versions": {"torch": "2.13.0"}, "device": "cpu", "command": "python -m benchmarks.run X",
                    "date": f"2026-01-0{seed + 1}T00:00:00", "cpu_sized": cpu_sized,
                    "preset_label": f"preset '{preset}'" + (", CPU-sized" if cpu_sized else ""),
                    "run_dir": "runs/none"})
    return accs


def _per_seed(accs, ipc, pipc, column):
    return [100 * np.mean(accs[(ipc, pipc, column, s)]) for s in SEEDS]


def test_table_layout_values_and_welch_against_scipy(tmp_path):
    accs = _write(tmp_path / "results.jsonl")
    assert report.main([str(tmp_path / "results.jsonl"), "--out-dir", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    lines = md.splitlines()
    i = lines.index(HEADER)
    rows = [line.split(" | ") for line in lines[i + 2:i + 5]]
    assert [r[0] + "|" + r[1] + "|" + r[2] for r in rows] == ["| 1|10|0.200", "| 1|50|1.0", "| 1|all|100.0"]
    dm = _per_seed(accs, 1, 10, "dm")
    assert rows[0][3] == f"{np.mean(dm):.2f} ± {np.std(dm):.2f} [22.42 ± 0.43]"  # ours, then the paper's
    assert rows[1][7] == "" and rows[1][8] == ""  # no DSV cells at pipc 50 (as in the paper)
    assert rows[0][10].rstrip(" |") == f"{np.mean(_per_seed(accs, 1, 10, 'blend_dsv_dm')):.2f} ± " \
                                       f"{np.std(_per_seed(accs, 1, 10, 'blend_dsv_dm')):.2f}"
    assert rows[2][5].endswith("[28.30]")  # DC full-data number at pipc all
    summary = json.loads((tmp_path / "rep" / "report.json").read_text())
    tests = summary["groups"][0]["welch"]
    assert [t["baseline"] for t in tests] == ["dsv_noise", "dc", "dsa"]
    for t, (ipc, pipc) in zip(tests, ((1, 10), (1, 50), (1, "all"))):
        ours, base = _per_seed(accs, ipc, pipc, "dm_dkkt"), _per_seed(accs, ipc, pipc, t["baseline"])
        expected = stats.ttest_ind(ours, base, equal_var=False)
        assert t["p"] == pytest.approx(expected.pvalue, rel=1e-9) and t["t"] == pytest.approx(expected.statistic)
        assert (t["n_ours"], t["n_baseline"]) == (3, 3)
        assert f"| {expected.pvalue:.3g} | 3, 3 |" in md
    # the best baseline is the highest mean among the other method columns (blend excluded)
    for t, ((ipc, pipc, _), cols) in zip(tests, ROWS.items()):
        means = {c: np.mean(_per_seed(accs, ipc, pipc, c)) for c in cols if c not in ("dm_dkkt", "blend_dsv_dm")}
        assert t["baseline"] == max(means, key=means.get)
    assert "over seeds" in md and "ddof 0" in md and "Welch" in md
    assert "seeds: 0, 1, 2" in md and "python -m benchmarks.run X" in md and "cpu_count" in md
    assert "preset: `paper` (not CPU-sized)" in md and "**CPU-sized**" not in md
    png = (tmp_path / "rep" / "figures" / "blend_accuracy.png")
    if png.exists():  # matplotlib installed
        assert png.read_bytes()[:8] == PNG


def test_cpu_sized_results_say_so(tmp_path):
    _write(tmp_path / "results.jsonl", preset="cpu", cpu_sized=True)
    assert report.main([str(tmp_path), "--no-figures"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Benchmark report: cifar10, preset 'cpu', CPU-sized")
    assert "NOT the paper's protocol" in md and "preset: `cpu` (CPU-sized)" in md


def test_single_seed_has_no_p_value(tmp_path):
    _write(tmp_path / "r.jsonl")
    records = [r for r in grid.read_jsonl(tmp_path / "r.jsonl") if r["seed"] == 0]
    row = report.summarise(records)[(1, 10)]
    w = report.welch(row)
    assert w["n_ours"] == 1 and np.isnan(w["p"])


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    assert report.main([str(tmp_path / "none.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_figures_from_a_smoke_run_are_pngs(smoke_run, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    _, _, out = smoke_run
    assert report.main([str(out), "--out-dir", str(tmp_path)]) == 0
    pngs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert pngs == ["blend_accuracy.png", "curves-test-ipc1-pipc10.png",  # curves: the DKKT runs' diagnostics
                    "spectrum_ipc1_pipc10.png", "synthetic_ipc1_pipc10_seed0.png"]
    for name in pngs:
        path = tmp_path / "figures" / name
        assert path.read_bytes()[:8] == PNG
        assert matplotlib.image.imread(path).shape[0] > 100
    md = (tmp_path / "report.md").read_text()
    assert all(f"figures/{name}" in md for name in pngs)
    summary = json.loads((tmp_path / "report.json").read_text())["groups"][0]
    assert set(summary["high_frequency_share"]) == {"dsv_noise", "dsv_real", "dm", "dm_dkkt"}
    assert "## Fidelity of the synthetic sets" in md  # beside the accuracy table
    fid = {row["column"]: row for row in summary["fidelity"]}
    assert {"dm", "dsv_noise", "dm_dkkt"} <= set(fid) and 0 <= fid["dsv_noise"]["transfer_accuracy"] <= 1
    assert "edge_accuracy" in fid["dsv_noise"] and "edge_accuracy" not in fid["dm"]


def _ablation_records(path, tmp_path):
    """Ablation-preset records: dm and dkkt_default at pipc 10 (3 seeds); dkkt_default's run folders
    hold a DKKT history, dm's none (DM has no diagnostics)."""
    accs = {"dm": [0.60, 0.62, 0.61], "dkkt_default": [0.65, 0.66, 0.64]}
    for column, values in accs.items():
        for seed, acc in enumerate(values):
            run_dir = f"runs/ablation/{column}/ipc1-pipc10-seed{seed}"
            history = ([{"iteration": i, "stat_ratio": (seed + 1) / (i + 1), "primal": 0.0, "edge_accuracy": 1.0,
                         "lambda_median": 1.0} for i in range(5)] if column != "dm" else [{"iteration": 0, "loss": 1.0}])
            (tmp_path / run_dir).mkdir(parents=True)
            (tmp_path / run_dir / "record.json").write_text(json.dumps({"history": history}))
            grid.append_jsonl(path, {
                "dataset": "fashion_mnist", "preset": "ablation", "column": column, "ipc": 1, "pipc": 10,
                "seed": seed, "split": "val", "accuracies": [acc, acc], "mean": acc, "cpu_sized": True,
                "final": history[-1], "run_dir": run_dir, "date": "2026-01-01T00:00:00"})


def test_ablation_report_has_a_row_per_variant_welch_against_dm_the_split_and_curves(tmp_path):
    _ablation_records(tmp_path / "results.jsonl", tmp_path)
    assert report.main([str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    p = stats.ttest_ind([65, 66, 64], [60, 62, 61], equal_var=False).pvalue
    pp = stats.ttest_rel([65, 66, 64], [60, 62, 61]).pvalue  # paired by seed: +5, +4, +3
    row = next(r for r in text.splitlines() if r.startswith("| dkkt_default |"))
    # stat/floor: mean of 1/5, 2/5, 3/5
    assert row == f"| dkkt_default | 65.00 ± 0.82 (n=3) | {p:.3g} | +4.00 ({pp:.3g}, 3) | 0.400 |"
    assert next(r for r in text.splitlines() if r.startswith("| dm |")) == "| dm | 61.00 ± 0.82 (n=3) |  |  |  |"
    assert "evaluation split: val: 200 held-out TRAINING images" in text
    assert "| ipc | pipc |" not in text  # not the paper's layout
    (test,) = json.loads((tmp_path / "report.json").read_text())["groups"][0]["welch"]
    assert test["column"] == "dkkt_default" and test["p"] == pytest.approx(p)
    pytest.importorskip("matplotlib", reason="the curves figure needs the bench extra (matplotlib)")
    assert (tmp_path / "figures" / "curves-val-ipc1-pipc10.png").read_bytes()[:8] == PNG
    assert "figures/curves-val-ipc1-pipc10.png" in text


def test_no_curves_without_dkkt_run_folders(tmp_path):
    _ablation_records(tmp_path / "results.jsonl", tmp_path)
    for record in tmp_path.glob("runs/ablation/dkkt_default/*/record.json"):
        record.unlink()
    assert report.main([str(tmp_path)]) == 0
    assert not (tmp_path / "figures").exists() and "curves" not in (tmp_path / "report.md").read_text()


def _variant_test(column, reference, ipc, mean, reference_mean, n=3):
    return {"column": column, "reference": reference, "ipc": ipc, "pipc": 10, "mean": mean,
            "reference_mean": reference_mean, "n": n, "n_reference": n}


FRACTIONS = {"dm_dkkt_f0.1": 0.1, "dm_dkkt_f0.3": 0.3, "dc_dkkt_f0.03": 0.03, "dc_dkkt_f0.3": 0.3}


def test_fraction_choice_takes_the_largest_mean_difference_over_all_rows():
    # f0.3 wins one row by far but loses the other; f0.1 has the larger mean (+1.5 vs +1.0)
    tests = [_variant_test("dm_dkkt_f0.1", "dm", 1, 62.0, 60.0), _variant_test("dm_dkkt_f0.1", "dm", 10, 71.0, 70.0),
             _variant_test("dm_dkkt_f0.3", "dm", 1, 65.0, 60.0), _variant_test("dm_dkkt_f0.3", "dm", 10, 67.0, 70.0)]
    choice = report.fraction_choice(tests, FRACTIONS, [(1, 10), (10, 10)], n_seeds=3)
    assert choice["chosen"] == 0.1 and not choice["missing"]
    assert choice["fractions"][0.1]["mean_difference"] == pytest.approx(1.5)
    assert choice["fractions"][0.3]["rows"] == {"dm ipc 1 pipc 10": 5.0, "dm ipc 10 pipc 10": -3.0}


def test_fraction_choice_breaks_near_ties_towards_the_smaller_fraction():
    tests = [_variant_test("dc_dkkt_f0.03", "dc", 1, 61.95, 60.0), _variant_test("dc_dkkt_f0.3", "dc", 1, 62.0, 60.0)]
    assert report.fraction_choice(tests, FRACTIONS, [(1, 10)])["chosen"] == 0.03  # 1.95 is within 0.1 of 2.0
    tests[0]["mean"] = 61.85
    assert report.fraction_choice(tests, FRACTIONS, [(1, 10)])["chosen"] == 0.3


def test_fraction_choice_waits_for_every_row_with_every_seed():
    tests = [_variant_test("dm_dkkt_f0.1", "dm", 1, 62.0, 60.0), _variant_test("dm_dkkt_f0.3", "dm", 1, 65.0, 60.0),
             _variant_test("dm_dkkt_f0.3", "dm", 10, 71.0, 70.0, n=2)]  # ipc 10: f0.1 absent, f0.3 one seed short
    choice = report.fraction_choice(tests, FRACTIONS, [(1, 10), (10, 10)], n_seeds=3)
    assert choice["chosen"] is None
    assert choice["missing"] == [(0.1, "dm ipc 10 pipc 10"), (0.3, "dm ipc 10 pipc 10")]
    assert "Not chosen: 2 (fraction, row) cell(s)" in "\n".join(report.fraction_lines(choice))
    assert report.fraction_choice([_variant_test("dm_dkkt_grad", "dm", 1, 62.0, 60.0)], FRACTIONS) is None  # not a sweep
    assert report.column_fractions(report._preset("term-sweep"))["dsa_dkkt_f0.03"] == 0.03
    assert report.column_fractions(report._preset("term-test")) == {}


def test_term_sweep_report_states_the_chosen_fraction(tmp_path):
    rng = np.random.default_rng(0)
    centre = {"dm": 60, "dm_dkkt_f0.03": 60.5, "dm_dkkt_f0.1": 62, "dm_dkkt_f0.3": 61}
    for ipc in (1, 10):
        for column, c in centre.items():
            for seed in (0, 1, 2):
                acc = list((c + ipc + rng.normal(0, 0.1, size=2)) / 100)
                grid.append_jsonl(tmp_path / "results.jsonl", {
                    "dataset": "fashion_mnist", "preset": "term-sweep", "column": column, "ipc": ipc, "pipc": 10,
                    "seed": seed, "accuracies": acc, "mean": float(np.mean(acc)), "eval_protocol": "dm protocol",
                    "eval_split": "val", "machine": {}, "versions": {}, "device": "cpu", "command": "x",
                    "date": "2026-01-01T00:00:00", "cpu_sized": True, "preset_label": "term-sweep",
                    "run_dir": "runs/none"})
    assert report.main([str(tmp_path), "--no-figures"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "## Balance fraction" in text and "Chosen: **0.1**" in text
    summary = json.loads((tmp_path / "report.json").read_text())["groups"][0]["fraction_choice"]
    assert summary["chosen"] == 0.1 and len(summary["rows"]) == 2
