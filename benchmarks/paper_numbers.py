"""Published accuracies (%, ConvNet) to print beside ours (docs/method.md, 'Published numbers').

``PUBLISHED[(dataset, ipc, pipc, column)] = (mean, std or None, source)``. The practical paper's
Table 1 (CIFAR-10) gives DM, DM*, DSV(noise), DSV(real) and its own method; DC and DSA at pipc
"all" are the full-data results of the DC / DSA papers (CIFAR-10 and Fashion-MNIST); DC and DSA at
ipc 1 with 10 / 50 shots are the DSV paper's shot-restricted CIFAR-10 results. No published
number exists for the (DSV+DM)/2 blend column at these settings.
"""
from __future__ import annotations

from typing import Optional, Union

Pipc = Union[int, str]
Published = tuple[float, Optional[float], str]

PRACTICAL = "practical paper, Table 1"
DC_PAPER = "DC / DSA papers, full data"
DSV_SHOTS = "DSV paper, shot-restricted"

# ipc, pipc: DM, DM*, DSV(noise), DSV(real), Ours (None where the paper has no entry)
_TABLE1 = {
    (1, 10): ((22.42, 0.43), (23.26, 0.66), (25.3, 0.5), (16.68, 0.49), (25.53, 0.45)),
    (1, 50): ((24.42, 0.29), (25.83, 1.62), None, None, (28.20, 0.69)),
    (1, "all"): ((26.39, 0.98), (27.08, 0.99), None, None, (29.95, 0.23)),
    (3, 10): ((28.44, 0.30), (26.04, 0.29), (23.98, 0.21), (27.95, 0.61), (30.38, 0.47)),
    (3, 50): ((34.49, 0.65), (34.26, 0.65), None, None, (37.41, 0.72)),
    (3, "all"): ((39.18, 0.46), (37.37, 0.42), None, None, (39.42, 0.37)),
    (10, 10): ((31.13, 0.45), (29.77, 0.66), (24.88, 1.29), (36.39, 0.52), (31.55, 0.72)),
    (10, 50): ((44.48, 0.43), (41.27, 0.59), None, None, (44.51, 0.38)),
    (10, "all"): ((49.75, 0.36), (45.98, 0.53), None, None, (47.38, 0.93)),
    (50, 50): ((49.44, 0.56), (48.05, 0.42), (23.68, 1.35), (47.01, 0.80), (51.12, 0.79)),
    (50, "all"): ((60.59, 0.41), (56.34, 0.56), None, None, (57.62, 0.33)),
}
_TABLE1_COLUMNS = ("dm", "dm_star", "dsv_noise", "dsv_real", "dm_dkkt")

# Full-data DC / DSA (ipc 1 / 10 / 50), no std published.
_FULL = {
    "cifar10": {"dc": (28.3, 44.9, 53.9), "dsa": (28.8, 52.1, 60.6)},
    "fashion_mnist": {"dc": (70.5, 82.3, 83.6), "dsa": (70.6, 84.6, 88.7)},
}
# CIFAR-10, ipc 1, 10 / 50 shots (= pipc): DC, DSA.
_SHOTS = {10: (19.66, 21.15), 50: (25.90, 26.01)}


def _build() -> dict[tuple[str, int, Pipc, str], Published]:
    table: dict[tuple[str, int, Pipc, str], Published] = {}
    for (ipc, pipc), values in _TABLE1.items():
        for column, value in zip(_TABLE1_COLUMNS, values):
            if value is not None:
                table[("cifar10", ipc, pipc, column)] = (value[0], value[1], PRACTICAL)
    for dataset, columns in _FULL.items():
        for column, values in columns.items():
            for ipc, mean in zip((1, 10, 50), values):
                table[(dataset, ipc, "all", column)] = (mean, None, DC_PAPER)
    for pipc, (dc, dsa) in _SHOTS.items():
        table[("cifar10", 1, pipc, "dc")] = (dc, None, DSV_SHOTS)
        table[("cifar10", 1, pipc, "dsa")] = (dsa, None, DSV_SHOTS)
    return table


PUBLISHED = _build()


def published(dataset: str, ipc: int, pipc: Pipc, column: str) -> Optional[Published]:
    """The published ``(mean, std, source)`` for this cell, or None.

    Example:
        >>> published("cifar10", 1, 10, "dm_dkkt")
        (25.53, 0.45, 'practical paper, Table 1')
        >>> published("fashion_mnist", 10, "all", "dsa")[0]
        84.6
    """
    return PUBLISHED.get((dataset, int(ipc), pipc if pipc == "all" else int(pipc), column))
