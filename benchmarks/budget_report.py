"""The report of a grid with evaluation budgets: accuracy against distillation iterations.

For every (ipc, pipc) row and evaluation protocol: one table with a line per budget and a column
per method (mean ± std over seeds of each seed's mean over its evaluation networks), the
difference DM+DKKT − DM with Welch's t-test and its 95 % interval (Welch–Satterthwaite degrees of
freedom), and whether the paper's claim holds there (DM+DKKT ≥ DM + 2 points with p < 0.05); beside
it, the paired difference over the seeds both hold (the same subset and evaluation networks per
seed) with the paired t-test's p, for information.
Figures: accuracy against iterations per row (mean ± std over seeds; the random-real baseline as
a band), and the sets of one seed at every budget.

Example:
    >>> diff = difference([70.0, 71.0, 72.0], [68.0, 69.0, 70.0])
    >>> round(diff["difference"], 2), round(diff["ci95"][0], 2), diff["n"]
    (2.0, 0.15, [3, 3])
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy import stats

from benchmarks.presets import BLEND_COLUMN, RANDOM_COLUMN, column_title, pipc_order

ORDER = (RANDOM_COLUMN, "dm", "dm_dkkt", "dsv_noise", BLEND_COLUMN)
OURS, BASE = "dm_dkkt", "dm"
CLAIM_POINTS = 2.0  # the claim: DM+DKKT at least this many points above DM ...
CLAIM_P = 0.05  # ... with Welch's p below this


def _pipc(value: Any) -> Any:
    return "all" if str(value) == "all" else int(value)


def summarise(records: Sequence[dict]) -> dict[tuple, dict[int, dict[str, dict]]]:
    """``{(ipc, pipc, protocol): {budget: {column: {"seeds", "means" (%), "mean", "std", "n",
    "networks"}}}}``; the random column (budget 0) is listed at budget 0."""
    table: dict[tuple, dict[int, dict[str, dict]]] = defaultdict(lambda: defaultdict(dict))
    for rec in sorted(records, key=lambda r: int(r["seed"])):
        row = (int(rec["ipc"]), _pipc(rec["pipc"]), str(rec["protocol"]))
        cell = table[row][int(rec["budget"])].setdefault(rec["column"], {"seeds": [], "means": [], "networks": []})
        cell["seeds"].append(int(rec["seed"]))
        cell["means"].append(100.0 * float(np.mean(rec["accuracies"])))
        cell["networks"].append(len(rec["accuracies"]))
    for budgets in table.values():
        for cells in budgets.values():
            for cell in cells.values():
                cell.update(mean=float(np.mean(cell["means"])), std=float(np.std(cell["means"])), n=len(cell["means"]))
    return {k: dict(sorted(v.items())) for k, v in sorted(table.items(), key=lambda kv: (
        kv[0][0], pipc_order(kv[0][1]), kv[0][2] != "dm", kv[0][2]))}


def difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``mean(a) − mean(b)`` with Welch's t-test and its 95 % interval (nan with < 2 values a side)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
    out = {"difference": diff, "t": float("nan"), "p": float("nan"), "df": float("nan"),
           "ci95": [float("nan"), float("nan")], "n": [int(len(a)), int(len(b))]}
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return out
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    res = stats.ttest_ind(a, b, equal_var=False)
    half = float(stats.t.ppf(0.975, df)) * se
    out.update(t=float(res.statistic), p=float(res.pvalue), df=float(df), ci95=[diff - half, diff + half])
    return out


def paired(a: dict, b: dict) -> dict[str, Any]:
    """``a`` − ``b`` (e.g. DM+DKKT − DM) over the seeds both cells hold (each seed: the same
    practical subset and the same evaluation networks' initialisations): mean difference and the
    paired t-test's p."""
    common = sorted(set(a["seeds"]) & set(b["seeds"]))
    d = np.array([a["means"][a["seeds"].index(s)] - b["means"][b["seeds"].index(s)] for s in common])
    p = float(stats.ttest_rel(d, np.zeros_like(d)).pvalue) if len(d) >= 2 and d.std() > 0 else float("nan")
    return {"paired_difference": float(d.mean()) if len(d) else float("nan"), "paired_p": p, "paired_n": len(d)}


def claim_holds(test: dict[str, Any]) -> bool:
    """The paper's claim at one budget: DM+DKKT ≥ DM + 2 points with Welch's p < 0.05."""
    return bool(test["difference"] >= CLAIM_POINTS and test["p"] < CLAIM_P)


def _fmt(cell: Optional[dict]) -> str:
    if not cell:
        return "–"
    return f"{cell['mean']:.2f} ± {cell['std']:.2f} (n {cell['n']})"


def tables(table: dict) -> tuple[list[str], list[dict]]:
    """Markdown: per (ipc, pipc, protocol), budgets × columns, and DM+DKKT − DM per budget."""
    lines, tests = [], []
    for (ipc, pipc, protocol), budgets in table.items():
        columns = [c for c in ORDER if any(c in cells for cells in budgets.values())]
        columns += sorted({c for cells in budgets.values() for c in cells} - set(columns))
        networks = sorted({n for cells in budgets.values() for c in cells.values() for n in c["networks"]})
        lines += [f"### ipc {ipc}, pipc {pipc}: {protocol} protocol ({'/'.join(map(str, networks))} network(s) "
                  "per set and seed)", ""]
        head = ["iterations", *[column_title(c) for c in columns], "DM+DKKT − DM", "95 % interval", "Welch p",
                "claim", "paired Δ (p, n)"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for budget, cells in budgets.items():
            row = [str(budget) if budget else "0 (no distillation)", *[_fmt(cells.get(c)) for c in columns]]
            if OURS in cells and BASE in cells:
                test = difference(cells[OURS]["means"], cells[BASE]["means"])
                holds = claim_holds(test)
                pair = paired(cells[OURS], cells[BASE])
                tests.append({"ipc": ipc, "pipc": pipc, "protocol": protocol, "budget": budget, **test,
                              "claim_holds": holds, **pair})
                lo, hi = test["ci95"]
                row += [f"{test['difference']:+.2f}", f"[{lo:+.2f}, {hi:+.2f}]", f"{test['p']:.3f}",
                        "holds" if holds else "no",
                        f"{pair['paired_difference']:+.2f} ({pair['paired_p']:.3f}, {pair['paired_n']})"]
            else:
                row += ["", "", "", "", ""]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines, tests


def verdict(tests: Sequence[dict]) -> str:
    """One line: where the claim holds, or that it holds nowhere measured."""
    tested = [t for t in tests if not math.isnan(t["p"])]  # both sides with at least 2 seeds
    if not tested:
        return "No budget has DM and DM+DKKT results of at least 2 seeds each yet."
    untested = len(tests) - len(tested)
    tests = tested
    held = [t for t in tests if t["claim_holds"]]
    if held:
        where = "; ".join(f"ipc {t['ipc']} pipc {t['pipc']}, {t['protocol']} protocol, {t['budget']} iterations "
                          f"({t['difference']:+.2f} points, p {t['p']:.3f})" for t in held)
        return f"The claim (DM+DKKT ≥ DM + {CLAIM_POINTS:g} points, p < {CLAIM_P}) holds at: {where}."
    best = max(tests, key=lambda t: t["difference"])
    return (f"The claim (DM+DKKT ≥ DM + {CLAIM_POINTS:g} points, p < {CLAIM_P}) holds at none of the "
            f"{len(tests)} budget(s) measured with at least 2 seeds a side; the largest difference is "
            f"{best['difference']:+.2f} points (p {best['p']:.3f}) at ipc {best['ipc']} pipc {best['pipc']}, "
            f"{best['protocol']} protocol, {best['budget']} iterations."
            + (f" ({untested} budget(s) with fewer seeds not tested.)" if untested else ""))


def figures(dataset: str, table: dict, entries: Sequence[tuple[dict, Path]], out: Path) -> list[str]:
    """Accuracy against iterations per (ipc, pipc, protocol) and one seed's sets at every budget."""
    from benchmarks.figures import _pyplot, _save, denormalised

    from dkkt_plugin.engine import load_synthetic, snapshot_path

    plt = _pyplot()
    lines = []
    for (ipc, pipc, protocol), budgets in table.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for column in [c for c in ORDER if c != RANDOM_COLUMN]:
            pts = [(b, cells[column]) for b, cells in budgets.items() if column in cells and b > 0]
            if not pts:
                continue
            x = np.array([b for b, _ in pts])
            m = np.array([c["mean"] for _, c in pts])
            s = np.array([c["std"] for _, c in pts])
            ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=column_title(column))
        rand = budgets.get(0, {}).get(RANDOM_COLUMN)
        if rand:
            ax.axhspan(rand["mean"] - rand["std"], rand["mean"] + rand["std"], color="grey", alpha=0.25,
                       label=f"random real ({rand['mean']:.1f} %)")
        ax.set_xscale("log")
        ticks = sorted(b for b in budgets if b > 0)
        ax.set_xticks(ticks, [str(b) for b in ticks])
        ax.minorticks_off()
        ax.set_xlabel("distillation iterations")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset} ipc {ipc} pipc {pipc}, {protocol} protocol (mean ± std over seeds)", fontsize=9)
        ax.legend(fontsize=8)
        name = f"accuracy_vs_iterations_ipc{ipc}_pipc{pipc}_{protocol}.png"
        _save(fig, out / "figures" / name)
        lines.append(f"![accuracy against iterations, ipc {ipc} pipc {pipc}, {protocol}](figures/{name})")
    # one seed's sets at every budget (the lowest seed of the first row)
    by_run: dict[tuple, dict[int, Path]] = defaultdict(dict)
    for rec, base in entries:
        if rec.get("run_dir") and rec["column"] != RANDOM_COLUMN:
            path = snapshot_path(base / rec["run_dir"], int(rec["budget"]))
            if path.is_file():
                by_run[(int(rec["ipc"]), _pipc(rec["pipc"]), int(rec["seed"]), rec["column"])][int(rec["budget"])] = path
    if by_run:
        ipc, pipc, seed = min({k[:3] for k in by_run}, key=lambda k: (k[0], pipc_order(k[1]), k[2]))
        runs = [(c, by_run[(ipc, pipc, seed, c)]) for c in ORDER if (ipc, pipc, seed, c) in by_run]
        budgets = sorted({b for _, paths in runs for b in paths})
        width = 1.3 + 3.2 * len(budgets)
        fig, axes = plt.subplots(len(runs), len(budgets), figsize=(width, 0.8 + 0.8 * len(runs)), squeeze=False)
        fig.subplots_adjust(left=1.2 / width, right=0.98, wspace=0.05)
        for i, (column, paths) in enumerate(runs):
            for j, budget in enumerate(budgets):
                ax = axes[i][j]
                ax.axis("off")
                if budget in paths:
                    imgs = denormalised(load_synthetic(paths[budget])).transpose(0, 2, 3, 1)  # (N, H, W, C)
                    strip = np.clip(np.concatenate(list(imgs), axis=1), 0, 1)  # (H, N * W, C)
                    ax.imshow(strip.squeeze(-1) if strip.shape[-1] == 1 else strip, cmap="gray", vmin=0, vmax=1)
                if i == 0:
                    ax.set_title(f"{budget} it", fontsize=8)
                if j == 0:
                    ax.text(-0.02, 0.5, column_title(column), transform=ax.transAxes, ha="right", va="center",
                            fontsize=8)
        fig.suptitle(f"{dataset} ipc {ipc} pipc {pipc} seed {seed}: the sets at every budget", fontsize=9)
        name = f"sets_by_budget_ipc{ipc}_pipc{pipc}_seed{seed}.png"
        _save(fig, out / "figures" / name)
        lines.append(f"![sets at every budget](figures/{name})")
    # sets figures drawn earlier from run folders that are not here (a results folder keeps no runs)
    linked = "\n".join(lines)
    for kept in sorted((out / "figures").glob("sets_by_budget_*.png")):
        if f"](figures/{kept.name})" not in linked:
            lines.append(f"![sets at every budget, drawn earlier](figures/{kept.name})")
    return lines
