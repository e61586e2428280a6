"""The report's figures: synthetic images per method (paper Fig. 2), radially averaged Fourier
power spectra of DSV vs DM images (Fig. 3 left), the accuracy of the (DSV+DM)/2 blend, and the
DKKT diagnostics over distillation (stationarity / floor, primal, edge accuracy, multipliers).

The spectrum comes from :mod:`dkkt_plugin.fidelity`; the plots need matplotlib (Agg backend,
PNG files).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from dkkt_plugin.fidelity import radial_power_spectrum
from dkkt_plugin.viz import image_grid

from .presets import COLUMN_TITLES

SPECTRUM_COLUMNS = ("dsv_noise", "dsv_real", "dm", "dm_dkkt")


def denormalised(payload: Mapping) -> np.ndarray:
    """A synthetic set's images in pixel space ``x * std + mean`` (not clipped), ``(N, C, H, W)``."""
    x = payload["images"].detach().float()
    if payload.get("mean") is not None and payload.get("std") is not None:
        c = x.shape[1]
        mean = torch.as_tensor(payload["mean"], dtype=torch.float32).flatten().expand(c).view(1, c, 1, 1)
        std = torch.as_tensor(payload["std"], dtype=torch.float32).flatten().expand(c).view(1, c, 1, 1)
        x = x * std + mean
    return x.numpy()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_synthetic_sets(sets: Mapping[str, Mapping], path: Path, title: str) -> Path:
    """One panel per method: its synthetic images, one class per row (ipc 1: one row)."""
    plt = _pyplot()
    names = list(sets)
    n = len(names)
    ipc = max(1, int(sets[names[0]]["images"].shape[0] // max(1, len(set(sets[names[0]]["labels"].tolist())))))
    cols = 1 if ipc == 1 else min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols if ipc > 1 else 9, (4.4 if ipc > 1 else 1.3) * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        payload = sets[name]
        labels = payload["labels"]
        k = len(set(labels.tolist()))
        grid = image_grid(payload["images"], nrow=k if ipc == 1 else ipc, mean=payload.get("mean"),
                          std=payload.get("std"), padding=1)  # (H', W', C) uint8
        ax.imshow(grid.numpy().squeeze(-1) if grid.shape[-1] == 1 else grid.numpy(), cmap="gray")
        ax.set_title(COLUMN_TITLES.get(name, name), fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_spectra(sets: Mapping[str, Sequence[np.ndarray]], path: Path, title: str) -> Path:
    """Radially averaged power spectra (each normalised to total power 1) per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, arrays in sets.items():
        freqs, power = radial_power_spectrum(np.concatenate(list(arrays)))
        share = power / power[1:].sum() if power[1:].sum() > 0 else power
        ax.semilogy(freqs[1:], share[1:], marker="o", ms=3, label=COLUMN_TITLES.get(name, name))
    ax.set_xlabel("spatial frequency (cycles / pixel)")
    ax.set_ylabel("share of power (radial mean, log)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_blend(rows: Sequence[tuple[str, Mapping[str, tuple[float, float]]]], path: Path, title: str) -> Path:
    """Grouped bars per row: accuracy (mean ± std over seeds, %) of each method and the blend."""
    plt = _pyplot()
    names = sorted({name for _, values in rows for name in values}, key=list(COLUMN_TITLES).index)
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * len(rows) * max(1, len(names)) / 3, 4))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(rows))]
        means = [values.get(name, (np.nan, 0))[0] for _, values in rows]
        stds = [values.get(name, (np.nan, 0))[1] for _, values in rows]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=COLUMN_TITLES.get(name, name))
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# (history key, title, log y-axis)
DIAGNOSTIC_PANELS = (("stat_ratio", "stationarity / floor (log)", True), ("primal", "primal term", False),
                     ("edge_accuracy", "edge-model accuracy on synthetic", False),
                     ("lambda_median", "multiplier median (log)", True))


def plot_diagnostics(histories: Mapping[str, Sequence[Sequence[Mapping]]], path: Path, title: str) -> Path:
    """DKKT diagnostics over iterations, one line per run group (mean over its runs, band min-max).

    Args:
        histories: group name -> the ``history`` lists of its runs (a ``record.json``'s
            ``"history"``: one dict per iteration with ``stat_ratio``, ``primal``, ...).
        path: PNG file to write.
        title: figure title.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(DIAGNOSTIC_PANELS), figsize=(4.0 * len(DIAGNOSTIC_PANELS), 3.6))
    colors = plt.get_cmap("tab20" if len(histories) > 10 else "tab10").colors
    for ax, (key, label, log) in zip(axes, DIAGNOSTIC_PANELS):
        for color, (name, runs) in zip(colors, histories.items()):
            runs = [[step for step in run if step.get(key) is not None] for run in runs]
            runs = [run for run in runs if run]
            if not runs:
                continue
            n = min(len(run) for run in runs)
            its = np.array([step["iteration"] for step in runs[0][:n]])
            values = np.array([[step[key] for step in run[:n]] for run in runs], dtype=float)  # (runs, n)
            ax.plot(its, values.mean(0), label=f"{name} (n={len(runs)})", lw=1.1, color=color)
            if len(runs) > 1:
                ax.fill_between(its, values.min(0), values.max(0), color=color, alpha=0.12)
        if log:
            ax.set_yscale("log")
        if key == "stat_ratio":
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel("iteration")
        ax.set_title(label, fontsize=9)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
