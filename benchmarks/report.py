"""Report: JSONL results -> Markdown table in the paper's layout, Welch t-tests, PNG figures.

Usage::

    python -m benchmarks.report RESULTS [RESULTS ...] [--out-dir DIR] [--figure-cell IPC PIPC SEED]

``RESULTS`` are JSONL files or result folders (their ``results*.jsonl``). Writes ``report.md``,
``report.json`` and ``figures/*.png`` into ``--out-dir`` (default: the first input's folder).

Per cell, a value is mean ± std over seeds of each seed's mean accuracy over its evaluation runs
(population std, ddof 0, as DatasetCondensation reports) on the evaluation split (the test set,
or held-out training images for ``val``). The paper's presets: one row per (ipc, pipc), DM+DKKT
compared with the best baseline of that row (highest mean) by Welch's t-test on those per-seed
means. An ablation preset (one with a ``reference`` column): one row per variant, each compared
with the reference (DM), with the final stationarity / floor ratio of its DKKT runs and, where the
run folders exist, their diagnostics over the iterations (``figures/curves-*.png``). Where the
sets were also evaluated on other architectures (``--eval-archs``), a cross-architecture table:
one line per method, one column per architecture.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # `python benchmarks/report.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from dkkt_plugin.errors import ConfigError, DkktError  # noqa: E402
from dkkt_plugin.fidelity import high_frequency_share  # noqa: E402

from benchmarks.grid import read_jsonl, record_key, results_files  # noqa: E402
from benchmarks.paper_numbers import published  # noqa: E402
from benchmarks.presets import BLEND_COLUMN, COLUMNS, PRESETS, Preset, column_title, pipc_order  # noqa: E402

TABLE_COLUMNS = (*COLUMNS, BLEND_COLUMN)
SPLIT_NOTES = {"test": "test (the dataset's test set)",
               "val": ("val: 200 held-out TRAINING images per class (seed 999, disjoint from the practical "
                       "subsets of seeds 0-4), used to choose settings; not the test set")}
OURS = "dm_dkkt"
STD_NOTE = ("mean ± std over seeds of each seed's mean accuracy (population std, ddof 0, "
            "as DatasetCondensation); n = seeds")


def load(inputs: Sequence[Path]) -> list[tuple[dict, Path]]:
    """Records with the folder their ``run_dir`` is relative to; one per key (the last read wins).

    Where records of one (dataset, preset) were distilled with different edge models (result
    folders of the same grid run with another ``--edge-model``), each column that uses an edge
    model is split by it: ``dm_dkkt`` becomes ``dm_dkkt@convnet`` and ``dm_dkkt@resnet18``."""
    read: list[tuple[dict, Path]] = []
    for p in inputs:
        p = Path(p)
        if not p.exists():
            raise ConfigError(f"report: {p} does not exist")
        files = results_files(p) if p.is_dir() else [p]
        read += [(rec, f.parent) for f in files for rec in read_jsonl(f)]
    if not read:
        raise ConfigError(f"report: no benchmark records in {', '.join(map(str, inputs))}")
    found: dict[tuple, tuple[dict, Path]] = {}
    for rec, base in _split_by_edge_model(read):
        found[record_key(rec)] = (rec, base)
    return list(found.values())


def _split_by_edge_model(read: list[tuple[dict, Path]]) -> list[tuple[dict, Path]]:
    """Suffix ``@<edge model>`` to the column of records whose method used an edge model, in the
    (dataset, preset) groups that hold more than one edge model; other records unchanged."""
    def path(rec: dict) -> Optional[str]:
        return (rec.get("config") or {}).get("edge_model")

    def arch(rec: dict) -> str:
        return str(((rec.get("edge_model") or {}).get("config") or {}).get("arch") or "convnet")

    archs: dict[tuple, dict[str, str]] = defaultdict(dict)  # (dataset, preset) -> {edge path: its arch}
    for rec, _ in read:
        if path(rec):
            archs[(rec["dataset"], rec["preset"])][path(rec)] = arch(rec)
    out = []
    for rec, base in read:
        group = archs.get((rec["dataset"], rec["preset"]), {})
        if path(rec) and len(group) > 1:
            by_arch = len(set(group.values())) == len(group)  # else the edge models' file names
            rec = {**rec, "column": f"{rec['column']}@{group[path(rec)] if by_arch else Path(path(rec)).stem}"}
        out.append((rec, base))
    return out


def _pipc(value: Any) -> Any:
    return "all" if str(value) == "all" else int(value)


def _preset(name: str) -> Optional[Preset]:
    """The preset a (possibly modified, ``cpu[iterations=5]``) preset name derives from."""
    return PRESETS.get(name.split("[")[0])


def table_columns(preset: str, records: Sequence[dict]) -> list[str]:
    """The preset's columns in its order (plus the blend where it has one), then any other column found."""
    p = _preset(preset)
    known = [*p.columns, *([BLEND_COLUMN] if p.blend else [])] if p else list(TABLE_COLUMNS)
    return known + sorted({r["column"] for r in records} - set(known))


def summarise(records: Sequence[dict]) -> dict[tuple[int, Any], dict[str, dict]]:
    """``{(ipc, pipc): {column: {"seeds", "means" (per seed, %), "mean", "std", "n", "access_ratio",
    "stat_ratio" (per seed, DKKT runs only)}}}``."""
    table: dict[tuple[int, Any], dict[str, dict]] = defaultdict(dict)
    for rec in sorted(records, key=lambda r: r["seed"]):
        row = table[(int(rec["ipc"]), _pipc(rec["pipc"]))]
        cell = row.setdefault(rec["column"], {"seeds": [], "means": [], "stat_ratio": [],
                                              "access_ratio": rec.get("access_ratio")})
        cell["seeds"].append(int(rec["seed"]))
        cell["means"].append(100.0 * float(np.mean(rec["accuracies"])))
        if (rec.get("final") or {}).get("stat_ratio") is not None:
            cell["stat_ratio"].append(float(rec["final"]["stat_ratio"]))
    for row in table.values():
        for cell in row.values():
            cell.update(mean=float(np.mean(cell["means"])), std=float(np.std(cell["means"])), n=len(cell["means"]))
    return dict(sorted(table.items(), key=lambda kv: (kv[0][0], pipc_order(kv[0][1]))))


def _ttest(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Welch's t and p of per-seed means (nan with fewer than 2 seeds on a side)."""
    if len(a) >= 2 and len(b) >= 2:
        res = stats.ttest_ind(a, b, equal_var=False)
        return float(res.statistic), float(res.pvalue)
    return float("nan"), float("nan")


def welch(row: dict[str, dict]) -> Optional[dict[str, Any]]:
    """DM+DKKT vs the best other method column of the row (by mean): Welch's t-test on per-seed means."""
    if OURS not in row:
        return None
    baselines = {c: v for c, v in row.items() if c not in (OURS, BLEND_COLUMN)}
    if not baselines:
        return None
    best = max(baselines, key=lambda c: baselines[c]["mean"])
    a, b = row[OURS]["means"], baselines[best]["means"]
    t, p = _ttest(a, b)
    return {"baseline": best, "ours_mean": float(np.mean(a)), "baseline_mean": float(np.mean(b)),
            "difference": float(np.mean(a) - np.mean(b)), "t": t, "p": p, "n_ours": len(a), "n_baseline": len(b)}


def variant_table(table: dict, columns: Sequence[str], reference: Any) -> tuple[list[str], list[dict]]:
    """An ablation: one line per variant; per (ipc, pipc): accuracy, Welch's p against ``reference``
    (one column, or ``{variant: its reference}``), the paired difference over the seeds both hold
    with the paired t-test's p, and the mean final stationarity / floor ratio (DKKT runs)."""
    from benchmarks.budget_report import paired

    versus = "its host" if isinstance(reference, dict) else column_title(reference)
    head = ["variant"] + [f"{h} (ipc {i} pipc {p})" for (i, p) in table
                          for h in ("acc (%)", f"p vs {versus}", "paired Δ (p, n)", "final stat/floor")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    tests = []
    for column in [c for c in columns if any(c in row for row in table.values())]:
        cells = []
        against = reference.get(column) if isinstance(reference, dict) else reference
        for (ipc, pipc), row in table.items():
            cell, ref = row.get(column), row.get(against)
            if cell is None:
                cells += ["", "", "", ""]
                continue
            p, pair = float("nan"), {}
            if ref and column != against:
                t, p = _ttest(cell["means"], ref["means"])
                pair = paired(cell, ref)
                tests.append({"ipc": ipc, "pipc": pipc, "column": column, "reference": against,
                              "mean": cell["mean"], "reference_mean": ref["mean"], "t": t, "p": p,
                              "n": cell["n"], "n_reference": ref["n"], **pair})
            ratio = f"{np.mean(cell['stat_ratio']):.3f}" if cell["stat_ratio"] else ""
            pp = pair.get("paired_p", float("nan"))
            pair_text = (f"{pair['paired_difference']:+.2f} ({f'{pp:.3g}' if np.isfinite(pp) else '–'}, "
                         f"{pair['paired_n']})" if pair.get("paired_n") else "")
            cells += [f"{cell['mean']:.2f} ± {cell['std']:.2f} (n={cell['n']})",
                      "" if not np.isfinite(p) else f"{p:.3g}", pair_text, ratio]
        lines.append(f"| {column} | " + " | ".join(cells) + " |")
    return lines, tests


TIE_POINTS = 0.1


def fraction_choice(tests: Sequence[dict], fractions_of: dict[str, float], grid_rows: Sequence[tuple[int, Any]] = (),
                    n_seeds: int = 1) -> Optional[dict[str, Any]]:
    """The balance fraction a sweep chooses, by the rule fixed before its results: the fraction with
    the largest mean difference from its host over every (host, ipc, pipc) row; fractions within
    ``TIE_POINTS`` of the best: the smallest of them.

    Args:
        tests: :func:`variant_table`'s.
        fractions_of: column -> the balance fraction it ran with (:func:`column_fractions`); the
            variants are these columns.
        grid_rows: the grid's (ipc, pipc) rows; every host is expected in each.
        n_seeds: a row counts once the variant and its host both have this many seeds.

    Returns:
        None when no column is such a variant; else ``{"fractions": {f: {"mean_difference" (over the
        rows measured so far; None without any), "rows": {row: difference}}}, "rows": [row, ...],
        "chosen": f or None, "missing": [(f, row), ...]}``; nothing is chosen while ``missing``.
    """
    variants = [(fractions_of[t["column"]], t) for t in tests if t["column"] in fractions_of]
    if not variants:
        return None
    measured: dict[float, dict[str, float]] = {f: {} for f, _ in variants}
    for f, t in variants:
        if min(t["n"], t["n_reference"]) >= n_seeds:
            measured[f][f"{t['reference']} ipc {t['ipc']} pipc {t['pipc']}"] = t["mean"] - t["reference_mean"]
    hosts = {t["reference"] for _, t in variants}
    rows = sorted({r for d in measured.values() for r in d}
                  | {f"{h} ipc {i} pipc {p}" for h in hosts for i, p in grid_rows})
    missing = [(f, r) for f in sorted(measured) for r in rows if r not in measured[f]]
    fractions = {f: {"mean_difference": float(np.mean(list(d.values()))) if d else None, "rows": dict(sorted(d.items()))}
                 for f, d in sorted(measured.items())}
    chosen = None
    if not missing:
        best = max(v["mean_difference"] for v in fractions.values())
        chosen = min(f for f, v in fractions.items() if v["mean_difference"] >= best - TIE_POINTS)
    return {"fractions": fractions, "rows": rows, "chosen": chosen, "missing": missing}


def column_fractions(spec: Optional[Preset]) -> dict[str, float]:
    """Column -> ``dkkt.balance_fraction`` of a preset's columns that set one (a fraction sweep)."""
    columns = spec.columns if spec else {}
    return {c: float(extra["dkkt.balance_fraction"]) for c, (_, extra) in columns.items()
            if "dkkt.balance_fraction" in extra}


def fraction_lines(choice: dict[str, Any]) -> list[str]:
    """Markdown for :func:`fraction_choice`: one line per fraction, one column per row, the choice."""
    rows = choice["rows"]
    lines = ["| fraction | " + " | ".join(rows) + " | mean difference |", "|" + "---|" * (len(rows) + 2)]
    for f, v in choice["fractions"].items():
        cells = [f"{v['rows'][r]:+.2f}" if r in v["rows"] else "–" for r in rows]
        mean = "–" if v["mean_difference"] is None else f"{v['mean_difference']:+.2f}"
        lines.append(f"| {f:g} | " + " | ".join(cells) + f" | {mean} |")
    if choice["chosen"] is None:
        lines += ["", f"Not chosen: {len(choice['missing'])} (fraction, row) cell(s) not measured with every seed "
                  "yet; the rule needs every fraction on every row (the mean difference so far covers the "
                  "measured rows only)."]
    else:
        lines += ["", f"Chosen: **{choice['chosen']:g}** (largest mean difference over the {len(rows)} rows; "
                  f"fractions within {TIE_POINTS:g} point of it: the smallest)."]
    return lines


ARCH_TITLES = {"convnet": "ConvNet", "convnet_bn": "ConvNet-BN", "convnet_nn": "ConvNet-NN", "mlp": "MLP",
               "lenet": "LeNet", "alexnet": "AlexNet", "alexnet_bn": "AlexNet-BN", "vgg11": "VGG11",
               "vgg11_bn": "VGG11-BN", "resnet18": "ResNet18", "resnet18_bn": "ResNet18-BN",
               **{f"convnet_d{d}": f"ConvNet-D{d}" for d in range(1, 5)}}


def arch_table(records: Sequence[dict], columns: Sequence[str]) -> tuple[list[str], list[dict]]:
    """Cross-architecture accuracy (records with ``archs``): one line per method (and ipc, pipc,
    budget, protocol), one column per architecture the sets were evaluated on, the ConvNet first;
    each value mean ± std over seeds of each seed's mean accuracy. Nothing when no record has
    ``archs``."""
    archs = ["convnet", *dict.fromkeys(a for r in records for a in (r.get("archs") or {}) if a != "convnet")]
    if len(archs) == 1:
        return [], []
    cells: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(records, key=lambda r: r["seed"]):
        key = (int(r["ipc"]), _pipc(r["pipc"]), r.get("budget"), r.get("protocol"), r["column"])
        cells[key]["convnet"].append(100.0 * float(np.mean(r["accuracies"])))
        for arch, fields in (r.get("archs") or {}).items():
            cells[key][arch].append(100.0 * float(np.mean(fields["accuracies"])))
    budgets = any(k[2] is not None for k in cells)
    order = {c: i for i, c in enumerate(columns)}
    head = ["ipc", "pipc", *(["iterations", "protocol"] if budgets else []), "method",
            *[ARCH_TITLES.get(a, a) for a in archs]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = []
    for key in sorted(cells, key=lambda k: (k[0], pipc_order(k[1]), k[2] or 0, str(k[3]), order.get(k[4], 99), k[4])):
        ipc, pipc, budget, protocol, column = key
        values = {a: {"means": v, "mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
                  for a, v in cells[key].items()}
        rows.append({"ipc": ipc, "pipc": pipc, "budget": budget, "protocol": protocol, "column": column,
                     "archs": values})
        text = [f"{values[a]['mean']:.2f} ± {values[a]['std']:.2f} (n={values[a]['n']})" if a in values else "–"
                for a in archs]
        lines.append("| " + " | ".join([str(ipc), str(pipc), *([str(budget), str(protocol)] if budgets else []),
                                         column_title(column), *text]) + " |")
    return lines, rows


def _arch_section(records: Sequence[dict], columns: Sequence[str]) -> tuple[list[str], list[dict]]:
    lines, rows = arch_table(records, columns)
    if not lines:
        return [], []
    return ["## Accuracy (%) across architectures", "",
            "Each synthetic set trained from scratch on every architecture (dkkt_plugin.models, "
            "DatasetCondensation's definitions) with the same protocol and seeds as the ConvNet; "
            f"values: {STD_NOTE}.", "", *lines, ""], rows


def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _cell_text(dataset: str, ipc: int, pipc: Any, column: str, cell: Optional[dict], structural: bool,
               n_seeds: int) -> str:
    pub = published(dataset, ipc, pipc, column)
    paper = "" if pub is None else f" [{pub[0]:.2f}" + (f" ± {pub[1]:.2f}]" if pub[1] is not None else "]")
    if cell is None:
        return ("–" + paper) if structural or pub else ""
    n = "" if cell["n"] == n_seeds else f" (n={cell['n']})"
    return f"{cell['mean']:.2f} ± {cell['std']:.2f}{n}{paper}"


def _structural(preset_name: str, ipc: int, pipc: Any, column: str) -> bool:
    """Whether the preset's grid has this cell (so a missing value means 'not run yet')."""
    preset = _preset(preset_name)
    if preset is None or ipc not in preset.ipcs or pipc not in preset.pipcs(ipc):
        return True
    if column == BLEND_COLUMN:
        return preset.has_blend(ipc, pipc)
    return column in preset.columns_for(ipc, pipc)


def markdown_table(dataset: str, preset: str, table: dict, n_seeds: int,
                   columns: Sequence[str] = TABLE_COLUMNS) -> list[str]:
    head = ["ipc", "pipc", "access %", *[column_title(c) for c in columns]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (ipc, pipc), row in table.items():
        ratio = next((c["access_ratio"] for c in row.values() if c.get("access_ratio") is not None), None)
        cells = [_cell_text(dataset, ipc, pipc, c, row.get(c), _structural(preset, ipc, pipc, c), n_seeds)
                 for c in columns]
        lines.append("| " + " | ".join([str(ipc), str(pipc), _fmt(ratio, 3 if ratio and ratio < 1 else 1), *cells]) + " |")
    return lines


def welch_table(table: dict) -> tuple[list[str], list[dict]]:
    lines = ["| ipc | pipc | DM+DKKT | best baseline | baseline | difference | t | p (Welch) | n (DM+DKKT, baseline) |",
             "|---|---|---|---|---|---|---|---|---|"]
    out = []
    for (ipc, pipc), row in table.items():
        w = welch(row)
        if w is None:
            continue
        out.append({"ipc": ipc, "pipc": pipc, **w})
        p = "n/a" if not np.isfinite(w["p"]) else f"{w['p']:.3g}"
        lines.append(f"| {ipc} | {pipc} | {w['ours_mean']:.2f} | {column_title(w['baseline'])} | "
                     f"{w['baseline_mean']:.2f} | {w['difference']:+.2f} | {_fmt(w['t'])} | {p} | "
                     f"{w['n_ours']}, {w['n_baseline']} |")
    return lines, out


FIDELITY = (("high_frequency_share", "HF share", 3), ("edge_accuracy", "edge acc. (%)", 0),
            ("transfer_accuracy", "transfer acc. (%)", 0))


def fidelity_table(records: Sequence[dict], columns: Sequence[str]) -> tuple[list[str], list[dict]]:
    """Markdown rows (ipc, pipc, column: each fidelity measure's mean over seeds) and their JSON."""
    cells: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for key, _, _ in FIDELITY:
            value = (r.get("fidelity") or {}).get(key)
            if value is not None and value == value:  # not NaN
                cells[(int(r["ipc"]), r["pipc"], r["column"])][key].append(float(value))
    if not cells:
        return [], []
    order = {c: i for i, c in enumerate(columns)}
    lines = ["| ipc | pipc | column | " + " | ".join(t for _, t, _ in FIDELITY) + " |", "|---|---|---|---|---|---|"]
    rows = []
    for (ipc, pipc, column) in sorted(cells, key=lambda k: (k[0], str(k[1]), order.get(k[2], 99))):
        got = cells[(ipc, pipc, column)]
        means = {k: float(np.mean(v)) for k, v in got.items()}
        rows.append({"ipc": ipc, "pipc": pipc, "column": column, **means, "n": max(map(len, got.values()))})
        text = [("" if k not in means else f"{means[k]:.{d}f}" if d else f"{100 * means[k]:.0f}") for k, _, d in FIDELITY]
        lines.append(f"| {ipc} | {pipc} | {column_title(column)} | " + " | ".join(text) + " |")
    return lines, rows


def _unique(records: Sequence[dict], field: str) -> list[str]:
    return sorted({json.dumps(r.get(field), sort_keys=True) if isinstance(r.get(field), dict) else str(r.get(field))
                   for r in records})


def header(dataset: str, preset: str, records: Sequence[dict]) -> list[str]:
    cpu_sized = any(r.get("cpu_sized") for r in records)
    label = records[0].get("preset_label", preset)
    seeds = sorted({int(r["seed"]) for r in records})
    dates = sorted(str(r.get("date")) for r in records)
    lines = [f"# Benchmark report: {dataset}, {label}", ""]
    if cpu_sized and any(r.get("budget") is not None for r in records):
        lines += [f"**CPU-sized** (preset `{preset}`): every concession is in the title above; each evaluation "
                  "line below says SCALED where a protocol's epochs were cut.", ""]
    elif cpu_sized:
        lines += [f"**CPU-sized** (preset `{preset}`): iterations, epochs and batches are scaled down; these "
                  "numbers are NOT the paper's protocol and are not comparable in absolute terms with the "
                  "published values in brackets.", ""]
    lines += [f"- dataset: {dataset}; preset: `{preset}` ({'CPU-sized' if cpu_sized else 'not CPU-sized'})",
              f"- seeds: {', '.join(map(str, seeds))}; {len(records)} result line(s), dated {dates[0]} … {dates[-1]}",
              f"- values: accuracy % on the evaluation split, {STD_NOTE}; [brackets]: published values "
              "(see benchmarks/paper_numbers.py)",
              *[f"- evaluation split: {SPLIT_NOTES.get(x, x)}" for x in sorted({r.get('split', 'test') for r in records})],
              *[f"- evaluation: {p}" for p in _unique(records, "eval_protocol")],
              *[f"- machine: {m}" for m in _unique(records, "machine")],
              f"- device(s): {', '.join(_unique(records, 'device'))}; versions: {'; '.join(_unique(records, 'versions'))}",
              *[f"- command: `{c}`" for c in _unique(records, "command")], ""]
    return lines


def _figures(dataset: str, preset: str, entries: list[tuple[dict, Path]], table: dict, out: Path,
             cell: Optional[tuple[int, Any, int]], columns: Sequence[str]) -> tuple[list[str], dict]:
    from benchmarks import figures

    from dkkt_plugin.engine import load_synthetic

    def sets_of(ipc, pipc, seed=None) -> dict[str, list]:
        found: dict[str, list] = defaultdict(list)
        for rec, base in entries:
            if (int(rec["ipc"]), _pipc(rec["pipc"])) == (ipc, pipc) and (seed is None or rec["seed"] == seed):
                path = base / rec.get("run_dir", "") / "synthetic.pt"
                if rec.get("run_dir") and path.is_file():
                    found[rec["column"]].append(load_synthetic(path))
        return found

    lines, extra = [], {}
    rows = [(k, row) for k, row in table.items() if any(c in row for c in columns)]
    if cell is None and rows:  # the row with most columns, its lowest seed
        (ipc, pipc), row = max(rows, key=lambda kv: len(kv[1]))
        cell = (ipc, pipc, min(min(c["seeds"]) for c in row.values()))
    if cell is not None:
        ipc, pipc, seed = cell
        found = sets_of(ipc, pipc, seed)
        sets = {c: found[c][0] for c in columns if found.get(c)}
        if sets:
            name = f"synthetic_ipc{ipc}_pipc{pipc}_seed{seed}.png"
            figures.plot_synthetic_sets(sets, out / "figures" / name, f"{dataset} ipc {ipc} pipc {pipc} seed {seed} ({preset})")
            lines.append(f"![synthetic images](figures/{name})")
        every = sets_of(ipc, pipc)
        spectra = {c: [figures.denormalised(p) for p in every[c]] for c in figures.SPECTRUM_COLUMNS if every.get(c)}
        if spectra:
            name = f"spectrum_ipc{ipc}_pipc{pipc}.png"
            figures.plot_spectra(spectra, out / "figures" / name, f"radially averaged power spectrum, {dataset} ipc {ipc} pipc {pipc}")
            extra["high_frequency_share"] = {c: high_frequency_share(np.concatenate(v)) for c, v in spectra.items()}
            lines.append(f"![power spectra](figures/{name})")
            lines.append("Share of the radially averaged power at or above 0.25 cycles/pixel (white noise: ~56 %): " + ", ".join(
                f"{column_title(c)} {100 * v:.1f} %" for c, v in extra["high_frequency_share"].items()))
    blend_rows = [(f"ipc {i} pipc {p}", {c: (row[c]["mean"], row[c]["std"]) for c in ("dm", "dsv_noise", BLEND_COLUMN, OURS) if c in row})
                  for (i, p), row in table.items() if BLEND_COLUMN in row]
    if blend_rows:
        figures.plot_blend(blend_rows, out / "figures" / "blend_accuracy.png", f"(DSV+DM)/2 blend, {dataset} ({preset})")
        lines.append("![blend accuracy](figures/blend_accuracy.png)")
    for (ipc, pipc), name in _curves(dataset, preset, entries, table, out):
        lines.append(f"![DKKT diagnostics, ipc {ipc} pipc {pipc}](figures/{name})")
    return lines, extra


def _curves(dataset: str, preset: str, entries: list[tuple[dict, Path]], table: dict,
            out: Path) -> list[tuple[tuple[int, Any], str]]:
    """Per row, the DKKT diagnostics over iterations of every column's runs whose folder is still
    there (``record.json``'s history; DM runs have none): ``figures/curves-<split>-ipc<I>-pipc<P>.png``."""
    from benchmarks import figures

    written = []
    for ipc, pipc in table:
        histories: dict[str, list] = defaultdict(list)
        splits = set()
        for rec, base in sorted(entries, key=lambda e: e[0]["seed"]):
            path = base / str(rec.get("run_dir", "")) / "record.json"
            if (int(rec["ipc"]), _pipc(rec["pipc"])) != (ipc, pipc) or not rec.get("run_dir") or not path.is_file():
                continue
            history = json.loads(path.read_text(encoding="utf-8")).get("history") or []
            if history and "stat_ratio" in history[0]:
                histories[rec["column"]].append(history)
                splits.add(rec.get("split", "test"))
        if histories:
            split = "-".join(sorted(splits))
            name = f"curves-{split}-ipc{ipc}-pipc{pipc}.png"
            figures.plot_diagnostics(histories, out / "figures" / name,
                                     f"DKKT diagnostics, {dataset} ipc {ipc} pipc {pipc} ({split} runs, {preset}); "
                                     "band: min-max over seeds")
            written.append(((ipc, pipc), name))
    return written


def build_report(entries: list[tuple[dict, Path]], out: Path, *, figures: bool = True,
                 cell: Optional[tuple[int, Any, int]] = None) -> tuple[str, dict]:
    """The Markdown text and the JSON summary of every (dataset, preset) group in ``entries``."""
    groups: dict[tuple[str, str], list[tuple[dict, Path]]] = defaultdict(list)
    for rec, base in entries:
        groups[(rec["dataset"], rec["preset"])].append((rec, base))
    md, summary = [], {"std": STD_NOTE, "groups": []}
    for (dataset, preset), items in sorted(groups.items()):
        records = [r for r, _ in items]
        table = summarise(records)
        n_seeds = len({int(r["seed"]) for r in records})
        columns = table_columns(preset, records)
        reference = getattr(_preset(preset), "reference", None)
        md += header(dataset, preset, records)
        if any(r.get("budget") is not None for r in records):  # evaluations along one trajectory
            from benchmarks import budget_report

            btable = budget_report.summarise(records)
            bl, tests = budget_report.tables(btable)
            md += ["## Verdict", "", budget_report.verdict(tests), "",
                   "## Accuracy (%) against distillation iterations", "",
                   f"Values: {STD_NOTE}. DM+DKKT − DM: difference of the means, its 95 % interval and Welch's "
                   "p (Welch–Satterthwaite degrees of freedom); the claim holds where the difference is at least "
                   f"{budget_report.CLAIM_POINTS:g} points with p < {budget_report.CLAIM_P}.", "", *bl]
            al, arch_rows = _arch_section(records, columns)
            md += al
            group = {"dataset": dataset, "preset": preset, "welch": tests,
                     "table": [{"ipc": k[0], "pipc": k[1], "protocol": k[2], "budgets": v} for k, v in btable.items()],
                     **({"archs": arch_rows} if arch_rows else {})}
            if figures:
                try:
                    md += ["## Figures", "", *budget_report.figures(dataset, btable, items, out), ""]
                except ImportError as exc:
                    md += [f"Figures skipped: {exc} (install matplotlib).", ""]
            summary["groups"].append(group)
            continue
        choice = None
        if reference:
            wl, tests = variant_table(table, columns, reference)
            versus = "its host method" if isinstance(reference, dict) else column_title(reference)
            md += [f"## Accuracy (%) per variant, Welch's t-test against {versus} on per-seed means",
                   "", *wl, "", "paired Δ: the variant's mean difference from its reference over the seeds both "
                   "hold (each seed: the same practical subset and evaluation seeds), the paired t-test's p and the "
                   "number of seeds (–: fewer than 2, or no spread). final stat/floor: the DKKT stationarity term "
                   "over its floor (its value with a zero gradient sum) at the last iteration, mean over seeds; "
                   "1 = the term did nothing.", ""]
            spec = _preset(preset)
            choice = fraction_choice(tests, column_fractions(spec),
                                     [(i, p) for i, pipcs in spec.rows for p in pipcs] if spec else list(table),
                                     len(spec.seeds) if spec else 1)
            if choice:
                md += ["## Balance fraction (variant − host, points, per row)", "", *fraction_lines(choice), ""]
        else:
            md += ["## Accuracy (%)", "", *markdown_table(dataset, preset, table, n_seeds, columns), "",
                   "– : not run (yet); empty: no such cell in this grid (DSV only at the smallest pipc of each ipc). "
                   "(DSV+DM)/2: pixel-wise mean of the DSV(noise) and DM sets of the same seed, evaluated alike.", ""]
            wl, tests = welch_table(table)
            md += ["## DM+DKKT vs the best baseline per row (Welch's t-test on per-seed means)", "", *wl, ""]
        al, arch_rows = _arch_section(records, columns)
        md += al
        fl, fid = fidelity_table(records, columns)
        if fl:
            md += ["## Fidelity of the synthetic sets (mean over seeds)", "", *fl, "",
                   "HF share: spectral power at or above 0.25 cycles/pixel (each image's mean removed; white "
                   "noise ≈ 0.56). Edge / transfer: accuracy on the synthetic images of the edge model and of an "
                   "independent classifier (another width and seed); edge high but transfer low = class "
                   "information only the edge model reads.", ""]
        group = {"dataset": dataset, "preset": preset, "welch": tests, "fidelity": fid,
                 **({"fraction_choice": choice} if choice else {}),
                 "table": [{"ipc": k[0], "pipc": k[1], "cells": v} for k, v in table.items()],
                 **({"archs": arch_rows} if arch_rows else {})}
        if figures:
            try:
                fig_lines, extra = _figures(dataset, preset, items, table, out, cell, columns)
                md += ["## Figures", "", *fig_lines, ""] if fig_lines else []
                group.update(extra)
            except ImportError as exc:
                md += [f"Figures skipped: {exc} (install matplotlib).", ""]
                print(f"benchmarks.report: figures skipped: {exc} (install matplotlib)", file=sys.stderr)
        summary["groups"].append(group)
    return "\n".join(md), summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (2 on a clear error)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="JSONL files or result folders")
    p.add_argument("--out-dir", default=None, help="where report.md, report.json, figures/ go")
    p.add_argument("--figure-cell", nargs=3, metavar=("IPC", "PIPC", "SEED"), default=None,
                   help="the cell whose synthetic images are shown (default: the fullest row)")
    p.add_argument("--no-figures", action="store_true")
    args = p.parse_args(argv)
    try:
        inputs = [Path(i) for i in args.inputs]
        out = Path(args.out_dir) if args.out_dir else (inputs[0] if inputs[0].is_dir() else inputs[0].parent)
        cell = None
        if args.figure_cell:
            cell = (int(args.figure_cell[0]), _pipc(args.figure_cell[1]), int(args.figure_cell[2]))
        text, summary = build_report(load(inputs), out, figures=not args.no_figures, cell=cell)
    except DkktError as exc:
        print(f"benchmarks.report: error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text + "\n", encoding="utf-8")
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    print(f"report: {out / 'report.md'}, {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
