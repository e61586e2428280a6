"""Benchmark presets: which cells the grid has and how each cell is distilled and evaluated.

A cell is one column (method) at one ``(ipc, pipc)`` row for one seed. Three presets:

- ``paper``: the practical paper's Table 1 (CIFAR-10 or Fashion-MNIST): ipc 1/3/10/50 x pipc
  10/50/all (ipc 50: pipc 50/all), DM 20 000 iterations (DM*, DSV, DM+DKKT the same), DC/DSA
  1000, batch_real 256, the paper's evaluation (SAM, 5000 epochs), 5 seeds. GPU work.
- ``cpu``: the same grid shape, scaled so that the Fashion-MNIST ipc 1 and ipc 10 rows (its
  default rows) finish in about two hours on 2 CPU cores. CPU-sized: NOT the paper's protocol.
- ``smoke``: one tiny cell per method (ipc 1, pipc 10, one seed), minutes on a laptop; CI runs it.
- ``ablation``: the DKKT ablation on Fashion-MNIST; its columns are variants (DM, DM+DKKT with the
  defaults and with one option switched, DSV alone) from :data:`ABLATION_VARIANTS`, evaluated on
  the validation split of the training set (the settings are chosen there, never on the test set).

In the paper's table DSV columns exist only at the smallest pipc of each ipc row group (pipc 10
for ipc 1/3/10, pipc 50 for ipc 50), see :meth:`Preset.columns_for`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from dkkt_plugin.config import parse_pipc  # noqa: F401 (the grid's --pipc type)
from dkkt_plugin.errors import ConfigError
from dkkt_plugin.pretrain import PretrainConfig

Pipc = Union[int, str]

# Table columns in the paper's order -> (registered method, fixed config overrides).
COLUMN_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "dm": ("dm", {}),
    "dm_star": ("dm_star", {}),  # our reading of DM*: DM embedded by the edge model (docs/method.md, 'Baselines')
    "dc": ("dc", {}),
    "dsa": ("dsa", {}),
    "dsv_noise": ("dsv", {"init": "noise"}),
    "dsv_real": ("dsv", {"init": "real"}),
    "dm_dkkt": ("dm_dkkt", {}),
}
COLUMNS = tuple(COLUMN_METHODS)
DSV_COLUMNS = ("dsv_noise", "dsv_real")
BLEND_COLUMN = "blend_dsv_dm"  # pixel-wise mean of the dsv_noise and dm sets (Fig. 3's blending)
BLEND_SOURCES = ("dsv_noise", "dm")
RANDOM_COLUMN = "random"  # ipc real images per class drawn at random (seeded) from the practical subset
COLUMN_TITLES = {"dm": "DM", "dm_star": "DM*", "dc": "DC", "dsa": "DSA", "dsv_noise": "DSV(noise)",
                 "dsv_real": "DSV(real)", "dm_dkkt": "DM+DKKT", BLEND_COLUMN: "(DSV+DM)/2",
                 RANDOM_COLUMN: "random"}
GM_COLUMNS = ("dc", "dsa")
GM_METHODS = ("dc", "dsa", "dc_dkkt", "dsa_dkkt")  # methods with DC's outer / inner loops

# The ablation's columns: variant -> (method, config overrides, dotted keys as build_config takes
# them). The ONE place where the DKKT options appear as override keys. "dkkt_default" is DM+DKKT
# with the package defaults (cos distance, alpha 1, boundary primal, classifier parameters, log
# multipliers, noise init at ipc 1, image lr 1/beta); every other dm_dkkt variant switches one
# option away from them; the dsv_* variants make Deep Support Vectors as the papers do, one
# ingredient at a time.
ABLATION_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "dm": ("dm", {}),
    "dkkt_default": ("dm_dkkt", {}),
    "init_real": ("dm_dkkt", {"init": "real"}),
    "paper_l1": ("dm_dkkt", {"dkkt.distance": "l1"}),  # the paper read literally: L1, alpha 0.1/0.01/0.001
    "l2_floor_nnls": ("dm_dkkt", {"dkkt.distance": "l2", "dkkt.scale": "floor", "refit_every": 20}),
    "alpha_0.1": ("dm_dkkt", {"dkkt.alpha": 0.1}),
    "primal_ce": ("dm_dkkt", {"dkkt.primal": "ce"}),
    "params_all": ("dm_dkkt", {"dkkt.params": "all"}),
    "params_weights": ("dm_dkkt", {"dkkt.params": "weights"}),
    "alpha_3": ("dm_dkkt", {"dkkt.alpha": 3.0}),
    "alpha_0.01": ("dm_dkkt", {"dkkt.alpha": 0.01}),
    "dkkt_manifold": ("dm_dkkt", {"dkkt.stationarity": "ce", "manifold_weight": 5.0}),
    "dkkt_ce": ("dm_dkkt", {"dkkt.stationarity": "ce"}),  # the DM+DKKT defaults before the search
    "dkkt_margin": ("dm_dkkt", {"dkkt.stationarity": "margin"}),
    "dkkt_margin_manifold": ("dm_dkkt", {"dkkt.stationarity": "margin", "manifold_weight": 5.0}),
    "dkkt_margin_softrelu_weights": ("dm_dkkt", {"dkkt.stationarity": "margin", "dkkt.soft_relu": 20.0,
                                                 "dkkt.params": "weights"}),
    "multiplier_projected": ("dm_dkkt", {"dkkt.multiplier": "projected"}),
    "nnls_refit": ("dm_dkkt", {"refit_every": 20}),
    "dsv_noise": ("dsv", {}),
    "dsv_real": ("dsv", {"init": "real"}),
    # Deep Support Vectors as the papers make them: DSV alone, one ingredient at a time.
    # Each variant pins the settings it was measured with (the defaults changed after the search).
    "dsv_ce_sgd": ("dsv", {"dkkt.stationarity": "ce", "image_optimizer": "sgd", "downscale": ()}),  # DSV before
    "dsv_adam": ("dsv", {"dkkt.stationarity": "ce", "downscale": (), "image_optimizer": "adam", "lr_img": 0.05}),
    "dsv_adam_manifold": ("dsv", {"dkkt.stationarity": "ce", "downscale": (), "image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0}),
    "dsv_adam_manifold_margin": ("dsv", {"downscale": (), "image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                                         "dkkt.stationarity": "margin"}),
    "dsv_adam_manifold_softrelu": ("dsv", {"dkkt.stationarity": "ce", "downscale": (), "image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                                           "dkkt.soft_relu": 20.0}),
    "dsv_adam_manifold_l1_all": ("dsv", {"dkkt.stationarity": "ce", "downscale": (), "image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                                         "dkkt.distance": "l1", "dkkt.params": "all"}),
    "dsv_haim": ("dsv", {"downscale": (), "image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                         "dkkt.stationarity": "margin", "dkkt.soft_relu": 20.0, "dkkt.multiplier": "projected",
                         "dkkt.lambda_min": 0.05, "multiplier_optimizer": "sgd", "lr_multiplier": 0.01}),
    "dsv_lowres": ("dsv", {"dkkt.stationarity": "ce", "image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                           "downscale": (4, 2), "upscale_every": 300}),
    "dsv_adam_manifold_cropflip": ("dsv", {"dkkt.stationarity": "ce", "downscale": (), "image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                                           "manifold_strategy": "crop_flip"}),
    "dsv_adam_manifold1_cropflip": ("dsv", {"dkkt.stationarity": "ce", "downscale": (), "image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 1.0,
                                            "manifold_strategy": "crop_flip"}),
    "dsv_adam_margin": ("dsv", {"downscale": (), "image_optimizer": "adam", "lr_img": 0.05, "dkkt.stationarity": "margin"}),
    "dsv_adam_lr0.01": ("dsv", {"dkkt.stationarity": "ce", "downscale": (), "image_optimizer": "adam", "lr_img": 0.01}),
    "dkkt_init_dsv": ("dm_dkkt", {"init": "dsv"}),  # DM+DKKT started from the default DSVs (1000 DSV steps)
    "dsv_full_res": ("dsv", {"downscale": ()}),  # the default DSV recipe at full resolution only
    # the low-frequency recipe: 1/4 then 1/2 of the side, never full size
    "dsv_lowfreq": ("dsv", {"downscale": (4, 2), "upscale_every": 500}),
    "dkkt_coarse_to_fine": ("dm_dkkt", {"dkkt.stationarity": "margin", "downscale": (4, 2), "upscale_every": 50}),  # DM+DKKT, 7 -> 14 -> 28 px
    "dsv_lowres_margin": ("dsv", {"image_optimizer": "adam", "lr_img": 0.05, "dkkt.stationarity": "margin",
                                  "downscale": (4, 2), "upscale_every": 300}),
    "dsv_lowres_tv": ("dsv", {"dkkt.stationarity": "ce", "image_optimizer": "adam", "lr_img": 0.05, "manifold_weight": 5.0,
                              "downscale": (4, 2), "upscale_every": 300, "dkkt.tv_weight": 0.3}),
}
SPLITS = ("test", "val")


def column_title(column: str) -> str:
    """The paper's name of a column (an ablation variant is its own name); ``dm_dkkt@resnet18``
    (a column split by edge model in a report): ``DM+DKKT (resnet18 edge)``."""
    if "@" in column:
        base, edge = column.split("@", 1)
        return f"{column_title(base)} ({edge} edge)"
    return COLUMN_TITLES.get(column, column)

PAPER_ROWS: tuple[tuple[int, tuple[Pipc, ...]], ...] = (
    (1, (10, 50, "all")), (3, (10, 50, "all")), (10, (10, 50, "all")), (50, (50, "all")))


def pipc_order(pipc: Pipc) -> tuple[int, int]:
    """Sort key: integers ascending, then ``"all"``."""
    return (1, 0) if pipc == "all" else (0, int(pipc))


@dataclass(frozen=True)
class EvalSpec:
    """How a cell's synthetic set is evaluated (see ``dkkt_plugin.evaluation``)."""

    protocol: str = "dm"  # "dm" (SGD, 1000 epochs) or "paper" (SAM, 5000 epochs)
    epochs: Optional[int] = None  # None: the protocol's own count; else the protocol SCALED to it
    num_eval: int = 5  # fresh ConvNets trained per synthetic set
    width: int = 128  # ConvNet width of the evaluation networks (128 = the standard ConvNet)
    split: str = "test"  # "test", or "val": held-out training images (dkkt_plugin.data.validation_indices)
    seed_stride: int = 1000  # evaluation run r of distillation seed s uses seed seed_stride * s + r
    # training precision of the evaluation networks: None = the protocol's ("auto": bf16 autocast
    # where the device computes bf16 natively). The CPU presets pin "fp32": their committed results
    # were evaluated in fp32, and a preset's cells must not mix precisions (--eval-precision
    # auto gives a separately named preset, e.g. cpu[precision=auto])
    precision: Optional[str] = None
    # architectures (names of dkkt_plugin.models) each set is also evaluated on, num_eval networks
    # each, seeded as the ConvNet's: the cross-architecture table (--eval-archs)
    archs: tuple[str, ...] = ()


TRANSFER = PretrainConfig(width=32, epochs=1, seed=1)  # 85.6 % on Fashion-MNIST's test set, ~6 min on one core


@dataclass(frozen=True)
class Preset:
    """A benchmark grid: rows, columns, seeds, per-method budgets and the evaluation.

    Args:
        name: preset id (part of every result's key).
        summary: one line for headers.
        cpu_sized: True when iterations / epochs are scaled down (never the paper's protocol).
        rows: ``(ipc, pipcs)`` groups of the table, in order.
        default_ipcs: the ipc rows run when ``--ipc`` is not given.
        seeds: distillation seeds (also choose the practical subset).
        iterations: distillation iterations per column.
        iterations_by_ipc: ``ipc -> {column: iterations}`` overriding ``iterations`` at that ipc.
        common: config overrides for every method (e.g. ``batch_real``, ``net_width``).
        gm_loops: ``ipc -> (outer_loop, inner_loop)`` for DC/DSA; missing ipc: the reference's.
        evaluation: the evaluation spec.
        pretrain: the edge model's training (``dataset`` and ``data_root`` are set per grid).
        checkpoint_every: distillation iterations between checkpoints.
        columns: column -> ``(method, fixed config overrides)``; the paper's methods by default.
        dsv_at_smallest_pipc: DSV columns only at the smallest pipc of each ipc (the paper's table).
        blend: whether the (DSV+DM)/2 blend is evaluated where a row has both sets.
        reference: None for the paper's layout (DM+DKKT against each row's best baseline); else
            the column every other column is compared with (an ablation: one row per variant), or
            ``{variant: its reference column}`` (each variant against its own host method).
        transfer: the independent classifier of the fidelity measures (None: none).
        random: whether the ``random`` column (ipc real images drawn at random from the practical
            subset, evaluated like every set) is in the grid.
        budgets: column -> the distillation iterations at which its run is evaluated, along ONE
            trajectory (the run continues from its own checkpoint). Empty: one evaluation per
            cell, after ``iterations``. ``random`` has budget 0.
        max_budget: ``(ipc, pipc)`` -> the largest budget run in that row (default: all of them).
        final_evaluations: protocol -> evaluation spec applied, besides ``evaluation``, at each
            column's final budget in the rows whose pipc is in ``final_pipcs``.
        order: sort key of the cells (the order in which a grid runs them); None: row, column, seed.
        edge_model: ``"packaged"``: the package's own edge model of the dataset instead of
            pretraining one (``--edge-model`` still wins).
    """

    name: str
    summary: str
    cpu_sized: bool
    rows: tuple[tuple[int, tuple[Pipc, ...]], ...]
    default_ipcs: tuple[int, ...]
    seeds: tuple[int, ...]
    iterations: dict[str, int]
    evaluation: EvalSpec
    pretrain: PretrainConfig  # the edge model's training (its dataset / data_root are the grid's)
    common: dict[str, Any] = field(default_factory=dict)
    iterations_by_ipc: dict[int, dict[str, int]] = field(default_factory=dict)
    gm_loops: dict[int, tuple[int, int]] = field(default_factory=dict)
    checkpoint_every: int = 50
    columns: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=lambda: dict(COLUMN_METHODS))
    dsv_at_smallest_pipc: bool = True
    blend: bool = True
    reference: Optional[Union[str, dict[str, str]]] = None
    # the independent classifier of the fidelity measures (transfer accuracy), trained once per
    # output folder: another width and seed than the edge model; None: no transfer accuracy
    transfer: Optional[PretrainConfig] = TRANSFER
    random: bool = False
    budgets: dict[str, tuple[int, ...]] = field(default_factory=dict)
    max_budget: dict[tuple[int, str], int] = field(default_factory=dict)
    final_evaluations: dict[str, EvalSpec] = field(default_factory=dict)
    final_pipcs: tuple[Pipc, ...] = ()
    order: Optional[Callable[[Any], tuple]] = None
    edge_model: Optional[str] = None

    # -- grid shape --------------------------------------------------------------------------
    @property
    def ipcs(self) -> tuple[int, ...]:
        return tuple(ipc for ipc, _ in self.rows)

    def pipcs(self, ipc: int) -> tuple[Pipc, ...]:
        for row_ipc, pipcs in self.rows:
            if row_ipc == ipc:
                return pipcs
        raise ConfigError(f"preset {self.name!r} has no ipc {ipc} row; its ipc rows: {list(self.ipcs)}")

    def dsv_pipc(self, ipc: int) -> Pipc:
        """The pipc where the paper reports DSV: the smallest of the ipc's row group."""
        return min(self.pipcs(ipc), key=pipc_order)

    def columns_for(self, ipc: int, pipc: Pipc) -> tuple[str, ...]:
        """Columns with a cell at ``(ipc, pipc)``: DSV only at :meth:`dsv_pipc` (the paper's table)."""
        dsv = not self.dsv_at_smallest_pipc or pipc == self.dsv_pipc(ipc)
        return tuple(c for c in self.columns if dsv or c not in DSV_COLUMNS)

    @property
    def extra_columns(self) -> tuple[str, ...]:
        """Columns that are not methods: ``random``, and the blend where it is a cell of its own."""
        return ((RANDOM_COLUMN,) if self.random else ()) + ((BLEND_COLUMN,) if self.blend and self.budgets else ())

    def extra_columns_for(self, ipc: int, pipc: Pipc) -> tuple[str, ...]:
        """:attr:`extra_columns` with a cell at ``(ipc, pipc)`` (the blend needs its two sources)."""
        return tuple(c for c in self.extra_columns if c != BLEND_COLUMN or self.has_blend(ipc, pipc))

    def column_budgets(self, column: str, ipc: int, pipc: Pipc) -> tuple[int, ...]:
        """The budgets at which ``column`` is evaluated at ``(ipc, pipc)`` (ascending)."""
        if column == RANDOM_COLUMN:
            return (0,)
        source = BLEND_SOURCES[0] if column == BLEND_COLUMN else column
        cap = self.max_budget.get((ipc, str(pipc)))
        budgets = self.budgets.get(source, ())
        if column == BLEND_COLUMN:  # the blend exists where both of its sources have a set
            budgets = tuple(b for b in budgets if b in self.budgets.get(BLEND_SOURCES[1], ()))
        return tuple(sorted(b for b in budgets if cap is None or b <= cap))

    def evaluation_points(self, column: str, ipc: int, pipc: Pipc) -> list[tuple[int, str]]:
        """``(budget, protocol)`` of every evaluation of ``column`` at ``(ipc, pipc)``: the main
        protocol at each budget, plus :attr:`final_evaluations` at the final budget of a
        :attr:`final_pipcs` row."""
        budgets = self.column_budgets(column, ipc, pipc)
        points = [(b, self.evaluation.protocol) for b in budgets]
        if budgets and pipc in self.final_pipcs:
            points += [(budgets[-1], name) for name in self.final_evaluations]
        return points

    def eval_spec(self, protocol: Optional[str]) -> EvalSpec:
        """The evaluation spec of a cell's protocol (None or the main one: :attr:`evaluation`)."""
        if protocol is None or protocol == self.evaluation.protocol:
            return self.evaluation
        if protocol not in self.final_evaluations:
            raise ConfigError(f"preset {self.name!r} has no evaluation with the {protocol!r} protocol")
        return self.final_evaluations[protocol]

    def has_blend(self, ipc: int, pipc: Pipc) -> bool:
        """Whether the (DSV+DM)/2 blend exists at this row (it needs the dsv_noise and dm cells)."""
        return self.blend and all(c in self.columns_for(ipc, pipc) for c in BLEND_SOURCES)

    # -- one cell ----------------------------------------------------------------------------
    def method_overrides(self, column: str, ipc: int) -> tuple[str, dict[str, Any]]:
        """``(method, config overrides)`` of ``column`` at ``ipc`` (without ipc/pipc/seed/data)."""
        if column not in self.columns:
            raise ConfigError(f"preset {self.name!r} has no column {column!r}; its columns: {', '.join(self.columns)}")
        method, fixed = self.columns[column]
        iterations = {**self.iterations, **self.iterations_by_ipc.get(ipc, {})}[column]
        overrides = {**self.common, **fixed, "iterations": iterations}
        if method in GM_METHODS and ipc in self.gm_loops:
            overrides["outer_loop"], overrides["inner_loop"] = self.gm_loops[ipc]
        return method, overrides

    # -- labels ------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """What every output says about the preset (CPU-sized ones are never the paper's)."""
        if self.cpu_sized and self.budgets:
            return f"preset '{self.name}', CPU-sized: {self.budget_text()}"
        if self.cpu_sized:
            return f"preset '{self.name}', CPU-sized (scaled down; NOT the paper's protocol)"
        return f"preset '{self.name}' (the paper's protocol)"

    def budget_text(self) -> str:
        """What a preset with budgets runs, against the paper (20 000 iterations, batch_real 256,
        SAM for 5 000 epochs with 5 networks): every concession, from the preset's own values."""
        rows = []
        for ipc, pipcs in self.rows:
            for pipc in pipcs:
                most = max((b for c in self.columns for b in self.column_budgets(c, ipc, pipc)), default=0)
                rows.append(f"ipc {ipc} pipc {pipc}: up to {most}")
        batch = self.common.get("batch_real")
        specs = [("", self.evaluation), *((" at the final budget of pipc " + "/".join(map(str, self.final_pipcs)),
                                           s) for s in self.final_evaluations.values())]
        evals = [f"{s.protocol} protocol {'unscaled' if s.epochs is None else f'SCALED to {s.epochs} epochs'} with "
                 f"{s.num_eval} network(s){where}" for where, s in specs]
        return (f"budgets {', '.join(rows)} iterations (paper: 20 000); batch_real {batch} (paper: 256; at pipc 10 "
                f"and 50 every practical image either way); evaluation: {'; '.join(evals)} (paper: SAM, 5 000 "
                f"epochs, 5 networks)")

    @property
    def tag(self) -> str:
        """Short form of :attr:`label` for every console line."""
        return f"CPU-sized preset '{self.name}'" if self.cpu_sized else f"preset '{self.name}'"

    def modified(self, **changes: Any) -> "Preset":
        """A copy with ``iterations`` (all columns), ``eval_epochs``, ``num_eval``, the evaluation
        ``split``, its training ``precision`` or the ``archs`` evaluated besides the ConvNet changed;
        the name records the change (``smoke[iterations=1]``) so results never mix."""
        if changes.get("split") not in (None, *SPLITS):
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {changes['split']!r}")
        if changes.get("split") == self.evaluation.split:  # the preset's own split: no change
            changes.pop("split")
        if changes.get("precision") is not None and changes["precision"] == self.evaluation.precision:
            changes.pop("precision")
        if changes.get("archs") is not None:  # the ConvNet is always evaluated; each other name once
            changes["archs"] = tuple(dict.fromkeys(a for a in changes["archs"] if a != "convnet")) or None
            if changes["archs"] == self.evaluation.archs:
                changes.pop("archs")
        changes = {k: v for k, v in changes.items() if v is not None}
        if "eval_at" in changes:
            if not self.budgets:
                raise ConfigError(f"preset {self.name!r} evaluates each run once; --eval-at needs a preset with "
                                  "budgets (e.g. reproduce)")
            if any(int(b) < 1 for b in changes["eval_at"]):
                raise ConfigError(f"--eval-at budgets must be positive iterations, got {list(changes['eval_at'])}")
            changes["eval_at"] = tuple(sorted({int(b) for b in changes["eval_at"]}))
        evaluation = {{"eval_epochs": "epochs"}.get(k, k): v for k, v in changes.items()
                      if k not in ("iterations", "eval_at")}
        if not changes:
            return self
        new = dataclasses.replace(self, evaluation=dataclasses.replace(self.evaluation, **evaluation))
        scaled = {k: v for k, v in evaluation.items() if k in ("epochs", "split", "precision", "archs")}
        if scaled and self.final_evaluations:  # every protocol of the preset scaled alike
            new = dataclasses.replace(new, final_evaluations={
                name: dataclasses.replace(spec, **scaled) for name, spec in self.final_evaluations.items()})
        if "eval_at" in changes:
            new = dataclasses.replace(new, budgets={c: changes["eval_at"] for c in self.budgets}, max_budget={},
                                      iterations={c: max(changes["eval_at"]) for c in self.iterations})
        if "iterations" in changes:
            new = dataclasses.replace(new, iterations={c: changes["iterations"] for c in self.iterations},
                                      iterations_by_ipc={})
        tag = ",".join(f"{k}={'/'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in sorted(changes.items()))
        return dataclasses.replace(new, name=f"{self.name}[{tag}]")


def _same(n_dm: int, n_gm: int) -> dict[str, int]:
    """DM, DM*, DSV and DM+DKKT get the DM budget; DC and DSA the gradient-matching one."""
    return {c: (n_gm if c in GM_COLUMNS else n_dm) for c in COLUMNS}


PAPER = Preset(
    name="paper",
    summary="the practical paper's Table 1 protocol (GPU work)",
    cpu_sized=False,
    rows=PAPER_ROWS,
    default_ipcs=(1, 3, 10, 50),
    seeds=(0, 1, 2, 3, 4),
    iterations=_same(20000, 1000),
    evaluation=EvalSpec(protocol="paper", epochs=None, num_eval=5),
    pretrain=PretrainConfig(epochs=30),  # the edge model's training is not in the paper; ours
    common={"batch_real": 256},
    checkpoint_every=500,
)

# CPU preset. Calibrated with short probes on this 2-core machine: 1 torch thread per process,
# Fashion-MNIST-shaped data, width-128 ConvNets, measured while other jobs kept the load at ~3
# (so conservative; an idle machine is faster). Measured seconds per iteration, batch_real 16:
#                 ipc 1: pipc 10 / 50 or all        ipc 10: pipc 10 / 50 or all
#   DM            0.36 / 0.52                      1.08 / 1.05
#   DM*           0.32 / 0.50                      1.06 / 1.06
#   DM+DKKT       0.55 / 0.74                      3.45 / 3.71
#   DSV (noise / real, pipc 10 only) 0.20 / 0.20   3.7 / 2.6
#   DC, DSA       1.1 / 1.3 (loops 1/1)            9.5 (loops 2/5; the reference's 10/50: ~320 s, estimated)
#   evaluation    0.07 s/epoch (ipc 1), 0.69 s/epoch (ipc 10), plus 35 s to test on the 10 000
#                 test images (accuracy plateaus by 50 epochs on real-image sets: 52.7/55.4 % at
#                 50/150 epochs for ipc 1, 70.2/70.5 % for ipc 10)
#   pretraining   ~6.9 ms per image (forward + backward): 2 epochs of 60 000 images = 830 s
# One seed of the ipc 1 and ipc 10 rows (17 cells + 1 blend per ipc):
#   ipc 1,  200 DM-family iterations: (1.40 + 1.35 + 2.03 + 0.40) x 200 = 1036 s
#   ipc 10,  50 DM-family iterations: (3.18 + 3.20 + 10.87 + 6.30) x 50 = 1178 s
#   DC + DSA, ipc 1: 10 iterations x 7.3 = 73 s; ipc 10: 3 iterations x 57 = 171 s
#   evaluation, 50 epochs, 1 run: 18 x (3.5 + 35) + 18 x (34.5 + 35) = 1944 s
#   = 4402 core-seconds per seed; 3 seeds + pretraining = 13 206 + 830 = 14 036 core-seconds
#   = 1.95 h with both cores busy (two 1-thread shards, `--shard 0/2` and `--shard 1/2`).
CPU = Preset(
    name="cpu",
    summary=("CPU-sized version of the paper's grid: Fashion-MNIST ipc 1 + 10 rows (the default) in "
             "about 2 h on 2 cores"),
    cpu_sized=True,
    rows=PAPER_ROWS,
    default_ipcs=(1, 10),  # ipc 3 and 50 exist (--ipc 3 50) but are outside the 2-hour budget
    seeds=(0, 1, 2),
    iterations=_same(50, 3),  # ipc 10 (and 50): DM family 50, DC/DSA 3
    # ipc 1: DSV 1000 steps, its default budget (a DSV step costs ~0.07 s; 200 steps leave noise)
    iterations_by_ipc={1: {**_same(200, 10), "dsv_noise": 1000, "dsv_real": 1000}, 3: _same(100, 5)},
    evaluation=EvalSpec(protocol="dm", epochs=50, num_eval=1, precision="fp32"),  # the dm protocol SCALED to 50 epochs
    pretrain=PretrainConfig(epochs=2),
    common={"batch_real": 16},  # real images per class per step (paper: 256)
    gm_loops={3: (2, 5), 10: (2, 5), 50: (2, 2)},  # (outer, inner); reference 10/50 (ipc 10), 50/10 (ipc 50)
    checkpoint_every=25,
)

SMOKE = Preset(
    name="smoke",
    summary="one tiny cell per method (minutes; what CI runs)",
    cpu_sized=True,
    rows=((1, (10,)),),
    default_ipcs=(1,),
    seeds=(0,),
    iterations=_same(2, 1),
    evaluation=EvalSpec(protocol="dm", epochs=10, num_eval=1, width=8, precision="fp32"),
    pretrain=PretrainConfig(width=8, epochs=1),
    common={"batch_real": 4, "net_width": 8},
    checkpoint_every=1,
    transfer=PretrainConfig(width=4, epochs=1, seed=1),
    edge_model="packaged",  # Fashion-MNIST: the packaged edge model, no pretraining
)

# The DKKT ablation (Fashion-MNIST, CPU-sized): what `benchmarks/ablation.py` ran before it became a
# preset. ipc 1 (ipc 10 with --ipc 10), pipc 10 and 50, 200 iterations for every variant, batch_real and widths at the
# methods' own defaults, evaluation by the dm protocol SCALED to 300 epochs, 2 runs, evaluation
# seed = distillation seed, on the validation split. The edge model as the packaged demo model's
# (3 epochs, weight decay 5e-3, seed 0); the committed results passed --edge-model.
ABLATION = Preset(
    name="ablation",
    summary="DKKT ablation: DM vs DM+DKKT with one option switched at a time, DSV alone (ipc 1, validation split)",
    cpu_sized=True,
    rows=((1, (10, 50)), (10, (10, 50))),
    default_ipcs=(1,),
    seeds=(0, 1, 2),
    iterations={v: 200 for v in ABLATION_VARIANTS},
    evaluation=EvalSpec(protocol="dm", epochs=300, num_eval=2, split="val", seed_stride=1, precision="fp32"),
    pretrain=PretrainConfig(epochs=3, weight_decay=5e-3),
    columns=dict(ABLATION_VARIANTS),
    dsv_at_smallest_pipc=False,
    blend=False,
    reference="dm",
)


# The DKKT term in three host methods under the balancing rule (GradBalance): DM, DC and DSA, each
# alone and with the term at fractions 0.03 / 0.1 / 0.3 of the host's image gradient, compared
# with its own host on the VALIDATION split (the fraction is chosen here, never on the test set).
TERM_FRACTIONS = (0.03, 0.1, 0.3)
TERM_HOSTS = {"dm": ("dm_dkkt", {"dkkt.balance": "grad"}), "dc": ("dc_dkkt", {}), "dsa": ("dsa_dkkt", {})}
TERM_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    **{host: (host, {}) for host in TERM_HOSTS},
    **{f"{method}_f{f:g}": (method, {**extra, "dkkt.balance_fraction": f})
       for host, (method, extra) in TERM_HOSTS.items() for f in TERM_FRACTIONS},
}
TERM_REFERENCES = {f"{method}_f{f:g}": host for host, (method, _) in TERM_HOSTS.items() for f in TERM_FRACTIONS}

def _term_budgets(variants: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """``iterations`` and ``iterations_by_ipc`` of the term presets: DM family 1000 iterations;
    DC / DSA 200 at ipc 1 and 50 at ipc 10."""
    return {"iterations": {c: (200 if m in GM_METHODS else 1000) for c, (m, _) in variants.items()},
            "iterations_by_ipc": {10: {c: (50 if m in GM_METHODS else 1000) for c, (m, _) in variants.items()}}}


TERM_SWEEP = Preset(
    name="term-sweep",
    summary=("the DKKT term in DM, DC and DSA under the balancing rule, fractions 0.03 / 0.1 / 0.3 against "
             "each host alone (validation split; dm protocol unscaled)"),
    cpu_sized=True,
    rows=((1, (10,)), (10, (10,))),
    default_ipcs=(1, 10),
    seeds=(0, 1, 2),
    # DM family: 1000 iterations (paper: 20 000); DC / DSA: 200 at ipc 1 with the reference's
    # loops 1/1, 50 at ipc 10 with loops 2/5 (reference: 1000 iterations, loops 10/50)
    **_term_budgets(TERM_VARIANTS),
    evaluation=EvalSpec(protocol="dm", epochs=None, num_eval=2, split="val"),
    pretrain=PretrainConfig(epochs=3, weight_decay=5e-3),  # the packaged edge model's recipe (CIFAR-10)
    gm_loops={10: (2, 5)},
    columns=dict(TERM_VARIANTS),
    dsv_at_smallest_pipc=False,
    blend=False,
    reference=dict(TERM_REFERENCES),
    transfer=None,
    edge_model="packaged",
)

# The DKKT term's test-set table: each host alone and with the term at the package defaults
# (the balancing rule at DEFAULT_BALANCE_FRACTION, chosen on the validation split by term-sweep),
# 5 seeds, the same budgets and evaluation as term-sweep but on the TEST set.
TERM_TEST_REFERENCES = {("dm_dkkt_grad" if host == "dm" else method): host for host, (method, _) in TERM_HOSTS.items()}
TERM_TEST_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    **{host: (host, {}) for host in TERM_HOSTS},
    **{name: (TERM_HOSTS[host][0], dict(TERM_HOSTS[host][1])) for name, host in TERM_TEST_REFERENCES.items()},
}
TERM_TEST = dataclasses.replace(
    TERM_SWEEP,
    name="term-test",
    summary=("the DKKT term in DM, DC and DSA at the package defaults (balancing rule) against each host "
             "alone, 5 seeds (test split; dm protocol unscaled)"),
    seeds=(0, 1, 2, 3, 4),
    **_term_budgets(TERM_TEST_VARIANTS),
    evaluation=dataclasses.replace(TERM_SWEEP.evaluation, split="test"),
    columns=dict(TERM_TEST_VARIANTS),
    reference=dict(TERM_TEST_REFERENCES),
)

REPRODUCE_COLUMNS = (RANDOM_COLUMN, "dm", "dm_dkkt", "dsv_noise", BLEND_COLUMN)


def reproduce_order(cell: Any) -> tuple:
    """The order in which the ``reproduce`` grid runs its cells, most wanted first:

    0. ipc 1, pipc 10: every column at budgets 200, 1 000, 5 000 (dm protocol), budget-major;
    1. DM and DM+DKKT continued to 20 000, all 5 seeds (seeds 0-2 first);
    2. the paper's protocol at the final budget of every ipc 1, pipc 10 column;
    3. ipc 1, pipc 50 to 5 000;
    4. ipc 10, pipc 10 to 5 000.
    """
    row, final = (cell.ipc, str(cell.pipc)), cell.protocol != "dm"
    if row == (1, "10"):
        stage = 2 if final else (0 if cell.budget <= 5000 else 1)
    else:
        stage = 3 if row == (1, "50") else 4
    column = REPRODUCE_COLUMNS.index(cell.column) if cell.column in REPRODUCE_COLUMNS else len(REPRODUCE_COLUMNS)
    return (stage, cell.budget, cell.seed, column, cell.protocol)


# The paper's claim at the paper's budget, as far as 2 CPU cores go (benchmarks/README.md,
# "reproduce"): one trajectory per run evaluated at 200 / 1 000 / 5 000 / 20 000 iterations
# with the dm protocol UNSCALED (1 000 epochs, 3 networks, the whole test set), the paper's
# protocol (SAM, 5 000 epochs, 1 network) at each pipc-10 column's final budget, the random-real
# baseline, package defaults only, the packaged Fashion-MNIST edge model. One DM or DM+DKKT step
# at pipc 10 is ~0.3 s on one core, a 1 000-epoch evaluation of 10 images ~25-40 s per network.
REPRODUCE = Preset(
    name="reproduce",
    summary=("DM vs DM+DKKT along one trajectory per run (200 / 1 000 / 5 000 / 20 000 iterations) with "
             "DSV, (DSV+DM)/2 and a random-real baseline; dm protocol unscaled"),
    cpu_sized=True,
    rows=((1, (10, 50)), (10, (10,))),
    default_ipcs=(1, 10),
    seeds=(0, 1, 2, 3, 4),
    iterations={"dm": 20000, "dm_dkkt": 20000, "dsv_noise": 5000},
    columns={c: COLUMN_METHODS[c] for c in ("dm", "dm_dkkt", "dsv_noise")},
    evaluation=EvalSpec(protocol="dm", epochs=None, num_eval=3),
    final_evaluations={"paper": EvalSpec(protocol="paper", epochs=None, num_eval=1)},
    final_pipcs=(10,),
    pretrain=PretrainConfig(epochs=3, weight_decay=5e-3),  # the packaged edge model's recipe (CIFAR-10)
    edge_model="packaged",
    common={"batch_real": 256},
    budgets={"dm": (200, 1000, 5000, 20000), "dm_dkkt": (200, 1000, 5000, 20000), "dsv_noise": (200, 1000, 5000)},
    max_budget={(1, "50"): 5000, (10, "10"): 5000},
    random=True,
    transfer=None,
    checkpoint_every=100,
    order=reproduce_order,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (PAPER, CPU, SMOKE, ABLATION, REPRODUCE, TERM_SWEEP, TERM_TEST)}
DEFAULT_PRESET = {"fashion_mnist": "cpu", "cifar10": "paper"}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (ConfigError naming the choices otherwise)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
