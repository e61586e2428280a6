"""Running one grid cell: pretrain (once) -> distill -> evaluate -> one JSONL record.

:class:`Context` holds what every cell of a grid shares (preset, dataset, output folder, device,
the edge model, the loaded train / test sets). :func:`run_cell` distils one column at one
``(ipc, pipc, seed)``, resuming from the run folder's checkpoint when one exists, and evaluates
the result; :func:`run_blend` evaluates the pixel-wise mean of a row's dsv_noise and dm sets
(the blending experiment of the paper's Fig. 3). Both return the record to append.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from dkkt_plugin import registry, runtime
from dkkt_plugin.data.practical import PracticalSubset, validation_indices
from dkkt_plugin.engine import (append_evaluation, build_config, checkpoint_iteration, distill_then_evaluate,
                                load_distill_data, load_synthetic, method_class, save_synthetic, snapshot_path)
from dkkt_plugin.initializers import real_init
from dkkt_plugin.errors import CheckpointError, ConfigError
from dkkt_plugin.evaluation import EvalResult, evaluate_synthetic, get_protocol
from dkkt_plugin.pretrain import PretrainConfig, load_edge_model, pretrain
from dkkt_plugin.provenance import provenance

from .grid import Cell, append_jsonl, read_jsonl
from .presets import BLEND_COLUMN, BLEND_SOURCES, RANDOM_COLUMN, EvalSpec, Preset

NETWORKS = "networks.jsonl"  # per run folder: every evaluation network's accuracy, as it finishes
NETWORKS_FORMAT = "dkkt-bench-network/1"


def _read_lines(path: Path) -> list[dict]:
    return read_jsonl(path, NETWORKS_FORMAT) if Path(path).is_file() else []


@dataclass
class Context:
    """What the cells of one grid run share."""

    preset: Preset
    dataset: str
    data_root: Optional[str]
    out: Path
    device: str = "cpu"
    command: str = ""
    edge_model: Optional[Path] = None
    transfer_model: Optional[str] = None  # an independent classifier read into each record's "fidelity"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for worker processes without the loaded datasets (each worker loads its own)."""
        return {**self.__dict__, "_cache": {k: v for k, v in self._cache.items() if k in ("edge_meta", "val")}}

    @property
    def runs_dir(self) -> Path:
        """``out/runs/<preset>``: a modified preset (``smoke[iterations=1]``) gets its own folder."""
        return self.out / "runs" / re.sub(r"[^A-Za-z0-9_.=,-]+", "_", self.preset.name)

    def data(self, train: bool):
        """The dataset's train or test split, loaded once (raises DatasetError when missing)."""
        key = "train" if train else "test"
        if key not in self._cache:
            self._cache[key] = registry.load("datasets", self.dataset)(self.data_root, train=train)
        return self._cache[key]

    def ensure_edge_model(self, explicit: Optional[str] = None) -> Path:
        """Reuse ``explicit``, else ``out/edge_model.pt``, pretraining it once (a lock file keeps
        concurrent shards from training it twice; the others wait)."""
        if not explicit and self.packaged:
            from dkkt_plugin.demo import packaged_edge_model

            explicit = str(packaged_edge_model())
        if explicit:
            path = Path(explicit)
            _, meta = load_edge_model(path)
            if meta.get("dataset") != self.dataset:
                raise ConfigError(f"--edge-model {path} was trained on {meta.get('dataset')!r}, not {self.dataset!r}")
        else:
            path = self.out / "edge_model.pt"
            _pretrain_once(path, self, self.pretrain_config(), "the edge model")
            _, meta = load_edge_model(path)
            want = dataclasses.asdict(self.pretrain_config())
            got = meta.get("config", {})
            diff = sorted(k for k in want if k != "data_root" and got.get(k) != want[k])
            if diff:
                raise ConfigError(f"{path} was pretrained with other settings ({', '.join(diff)}) than preset "
                                  f"{self.preset.name!r} asks; use another --out or pass --edge-model PATH")
        self.edge_model = path
        self._cache["edge_meta"] = meta
        return path

    @property
    def packaged(self) -> bool:
        """Whether the preset takes the package's own Fashion-MNIST models instead of pretraining."""
        return self.preset.edge_model == "packaged" and self.dataset == "fashion_mnist"

    def ensure_transfer_model(self) -> Optional[str]:
        """The independent classifier of the fidelity measures: ``--transfer-model``, else
        ``out/transfer_model.pt`` trained once by the preset's ``transfer`` recipe (None: none)."""
        if self.transfer_model is None and self.preset.transfer is not None and self.packaged:
            from dkkt_plugin.demo import packaged_transfer_model

            _, meta = load_edge_model(packaged_transfer_model())
            want = {k: v for k, v in dataclasses.asdict(self.preset.transfer).items() if k not in ("dataset", "data_root")}
            if {k: meta["config"].get(k) for k in want} != want:
                raise ConfigError(f"the packaged transfer model was made with {meta['config']}, not preset "
                                  f"{self.preset.name!r}'s transfer recipe; pass --transfer-model PATH")
            self.transfer_model = str(packaged_transfer_model())
        if self.transfer_model is None and self.preset.transfer is not None:
            path = self.out / "transfer_model.pt"
            cfg = dataclasses.replace(self.preset.transfer, dataset=self.dataset, data_root=self.data_root)
            _pretrain_once(path, self, cfg, "the transfer model (an independent classifier)")
            self.transfer_model = str(path)
        return self.transfer_model

    def pretrain_config(self) -> PretrainConfig:
        """The preset's edge-model training on this grid's dataset."""
        return dataclasses.replace(self.preset.pretrain, dataset=self.dataset, data_root=self.data_root)

    def provenance(self) -> dict[str, Any]:
        meta = self._cache.get("edge_meta") or {}
        edge = {"path": str(self.edge_model), "test_accuracy": meta.get("test_accuracy"),
                "config": meta.get("config")} if self.edge_model else None
        return {"preset_label": self.preset.label, "cpu_sized": self.preset.cpu_sized,
                **provenance(command=self.command, device=self.device), "edge_model": edge}

    def eval_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(M, C, H, W)`` and labels ``(M,)`` of the preset's evaluation split: the test
        set, or (``val``) the held-out training images of :func:`dkkt_plugin.data.validation_indices`."""
        if self.preset.evaluation.split == "val":
            train = self.data(train=True)
            if "val" not in self._cache:
                self._cache["val"] = validation_indices(train)
            return train.images[self._cache["val"]], train.targets[self._cache["val"]]
        test = self.data(train=False)
        return test.images, test.targets

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, seed: int, spec: Optional[EvalSpec] = None,
                 cache: Optional[Path] = None, iteration: Optional[int] = None, arch: str = "convnet") -> EvalResult:
        """The preset's evaluation (or ``spec``); evaluation run r of distillation seed s uses seed
        ``seed_stride * s + r`` (1000 s + r: the columns of one seed are evaluated with the same
        networks' initialisations).

        ``cache``: a JSONL file keeping every finished network's accuracy (with ``iteration``, the
        spec and, for another architecture than the ConvNet, ``arch``), so that an interrupted
        evaluation resumes at the next network. ``arch``: the networks' architecture
        (:mod:`dkkt_plugin.models`; see :meth:`evaluate_archs`)."""
        spec = spec or self.preset.evaluation
        protocol = get_protocol(spec.protocol, spec.epochs)
        x, y = self.eval_set()
        kwargs = dict(protocol=protocol, device=self.device, width=spec.width, arch=arch,
                      num_classes=self.data(train=True).num_classes)

        def run(num_eval: int, seed: int) -> EvalResult:  # at the spec's precision (None: the process-wide one)
            with runtime.use(precision=spec.precision):
                return evaluate_synthetic(images, labels, x, y, num_eval=num_eval, seed=seed, **kwargs)

        base = spec.seed_stride * seed
        if cache is None:
            result = run(spec.num_eval, base)
        else:
            # a network's result depends on the set, the spec and its seed, not on how many there are
            asked = {"iteration": iteration, "arch": None if arch == "convnet" else arch,
                     "spec": {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("num_eval", "archs")}}
            done = {r["seed"]: r for r in _read_lines(cache) if _cached(r, asked)}
            result = EvalResult(protocol="")
            descriptions = []
            for r in range(spec.num_eval):
                if base + r not in done:
                    one = run(1, base + r)
                    done[base + r] = {**asked, "seed": base + r, "accuracy": one.accuracies[0],
                                      "protocol": one.protocol, "seconds": round(one.seconds, 3)}
                    append_jsonl(cache, done[base + r], fmt=NETWORKS_FORMAT)
                net = done[base + r]
                result.accuracies.append(net["accuracy"])
                result.seeds.append(base + r)
                result.seconds += net["seconds"]
                descriptions += [net["protocol"]] if net["protocol"] not in descriptions else []
            result.protocol = " | ".join(descriptions)  # one text unless networks ran on different machines
        if spec.width != 128 and arch.startswith("convnet"):
            result.protocol += f"; evaluation ConvNet width {spec.width} (standard: 128)"
        result.arch = arch
        return result

    def evaluate_archs(self, images: torch.Tensor, labels: torch.Tensor, seed: int, spec: Optional[EvalSpec] = None,
                       cache: Optional[Path] = None, iteration: Optional[int] = None,
                       run_dir: Optional[Path] = None) -> dict[str, Any]:
        """The set evaluated on each architecture of ``spec.archs`` (none: ``{}``), as the
        ConvNet is (:meth:`evaluate`): ``{arch: fields}`` for the record's ``archs``; each
        evaluation is also appended to ``run_dir``'s evaluations.jsonl when given."""
        spec = spec or self.preset.evaluation
        out = {}
        for arch in spec.archs:
            t0 = time.perf_counter()
            ev = self.evaluate(images, labels, seed, spec=spec, cache=cache, iteration=iteration, arch=arch)
            out[arch] = _eval_fields(ev, time.perf_counter() - t0)
            if run_dir is not None:
                append_evaluation(run_dir, ev.as_dict(), command=self.command, device=self.device,
                                  iteration=iteration)
        return out


def _pretrain_once(path: Path, ctx: Context, cfg: PretrainConfig, what: str) -> None:
    lock = path.with_name(path.name + ".lock")
    told = False
    while not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not told:
                print(f"waiting for another process to pretrain {path} (lock {lock}; delete the lock if "
                      "no process is pretraining)", file=sys.stderr, flush=True)
                told = True
            time.sleep(5)
            continue
        try:
            if not path.exists():
                print(f"pretraining {what} ({cfg.epochs} epochs, width {cfg.width}, seed {cfg.seed}) -> {path}",
                      flush=True)
                meta = pretrain(cfg, path, device=ctx.device, command=ctx.command)
                print(f"{what}: test accuracy {100 * meta['test_accuracy']:.2f} % "
                      f"({meta['train_seconds']:.0f} s)", flush=True)
        finally:
            os.close(fd)
            lock.unlink(missing_ok=True)


def _base_record(ctx: Context, cell: Cell, access_ratio: float) -> dict[str, Any]:
    return {"dataset": cell.dataset, "preset": cell.preset, "column": cell.column, "ipc": cell.ipc,
            "pipc": cell.pipc, "access_ratio": access_ratio, "seed": cell.seed,
            "split": ctx.preset.evaluation.split}


def _cached(line: dict[str, Any], asked: dict[str, Any]) -> bool:
    """Whether a cached network line answers ``asked``: the same iteration and architecture (none
    recorded: the ConvNet) and the same spec, whose ``archs`` (what else is evaluated) does not matter."""
    spec = {k: v for k, v in (line.get("spec") or {}).items() if k != "archs"}
    return spec == asked["spec"] and all(line.get(k) == v for k, v in asked.items() if k != "spec")


def _archs(archs: dict[str, Any]) -> dict[str, Any]:
    """The record's ``archs`` field where the preset evaluates other architectures (else nothing)."""
    return {"archs": archs} if archs else {}


def _eval_fields(ev: EvalResult, seconds: float) -> dict[str, Any]:
    return {"accuracies": [float(a) for a in ev.accuracies], "mean": ev.mean, "std_eval": ev.std,
            "eval_protocol": ev.protocol, "eval_seeds": ev.seeds, "eval_seconds": round(seconds, 3)}


def run_cell(ctx: Context, cell: Cell) -> dict[str, Any]:
    """Distil and evaluate ``cell``; returns its JSONL record.

    An existing ``checkpoint.pt`` in the cell's run folder is resumed (a run interrupted during
    distillation continues where it stopped; a finished one only writes its outputs again). A
    cell with a budget continues its run to that budget (:func:`run_point`).
    """
    if cell.column == RANDOM_COLUMN:
        return run_random(ctx, cell)
    if cell.budget is not None:
        return run_point(ctx, cell)
    method, overrides = ctx.preset.method_overrides(cell.column, cell.ipc)
    needs_edge = method_class(method).needs_edge_model
    if needs_edge and ctx.edge_model is None:
        raise ConfigError(f"{cell}: the edge model is not ready (call ensure_edge_model first)")
    cfg = build_config(method, overrides, dataset=ctx.dataset, data_root=ctx.data_root, ipc=cell.ipc,
                       pipc=cell.pipc, seed=cell.seed, edge_model=str(ctx.edge_model) if needs_edge else None)
    train = ctx.data(train=True)
    data = load_distill_data(cfg, ctx.device, train=train)  # a fresh edge-model copy per cell
    access_ratio = 100.0 * data.real.shape[0] / len(train)
    run_dir = ctx.runs_dir / cell.run_name
    resumed = (run_dir / "checkpoint.pt").exists()
    transfer_path = ctx.ensure_transfer_model()
    transfer = load_edge_model(transfer_path, device=ctx.device)[0] if transfer_path else None
    seconds: list[float] = []

    def evaluate(images: torch.Tensor, labels: torch.Tensor) -> EvalResult:
        t0 = time.perf_counter()
        ev = ctx.evaluate(images, labels, cell.seed)
        seconds.append(time.perf_counter() - t0)
        return ev

    [stop] = distill_then_evaluate(method, cfg, run_dir, evaluate=evaluate, resume=resumed, device=ctx.device,
                                   checkpoint_every=ctx.preset.checkpoint_every, data=data, command=ctx.command,
                                   transfer_model=transfer)
    ev, eval_seconds, rec = stop.evaluation, seconds[0], stop.run.record
    archs = ctx.evaluate_archs(stop.run.images, stop.run.labels, cell.seed, run_dir=run_dir,
                               iteration=cfg.iterations)
    return {**_base_record(ctx, cell, access_ratio), "method": method, "config": dataclasses.asdict(cfg),
            "resolved": rec.get("resolved"), **_eval_fields(ev, eval_seconds), **_archs(archs),
            "distill_seconds": rec["seconds"], "seconds_per_iteration": rec["seconds_per_iteration"],
            "iterations": cfg.iterations,
            "final": rec["history"][-1] if rec.get("history") else {}, "fidelity": rec.get("fidelity"),
            "transfer_model": ctx.transfer_model, "resumed": resumed, "run_dir": str(run_dir.relative_to(ctx.out)),
            **ctx.provenance()}


def run_point(ctx: Context, cell: Cell) -> dict[str, Any]:
    """Evaluate the set of ``cell``'s run at ``cell.budget`` with ``cell.protocol``.

    The run (one folder for every budget of the column, ipc, pipc and seed) is continued from its
    checkpoint to the budget, stopping at every smaller budget of the preset on the way, and its
    set at each is kept as ``snapshots/it<budget>.pt``; a run already past the budget evaluates
    that snapshot. The evaluation resumes network by network (``networks.jsonl``).
    """
    method, overrides = ctx.preset.method_overrides(cell.column, cell.ipc)
    needs_edge = method_class(method).needs_edge_model
    if needs_edge and ctx.edge_model is None:
        raise ConfigError(f"{cell}: the edge model is not ready (call ensure_edge_model first)")
    overrides = {**overrides, "iterations": cell.budget}
    cfg = build_config(method, overrides, dataset=ctx.dataset, data_root=ctx.data_root, ipc=cell.ipc,
                       pipc=cell.pipc, seed=cell.seed, edge_model=str(ctx.edge_model) if needs_edge else None)
    train = ctx.data(train=True)
    run_dir = ctx.runs_dir / cell.run_name
    snap = snapshot_path(run_dir, cell.budget)
    distilled = None
    if not snap.is_file():
        at = checkpoint_iteration(run_dir)
        if at is not None and at > cell.budget:
            raise CheckpointError(f"{cell}: the run in {run_dir} is at iteration {at}, past {cell.budget}, and "
                                  f"kept no set at {cell.budget}; move the run folder away to distil it again")
        stops = [b for b in ctx.preset.column_budgets(cell.column, cell.ipc, cell.pipc) if b < cell.budget]
        distilled = distill_then_evaluate(method, cfg, run_dir, stops=stops, resume=at is not None,
                                          device=ctx.device, checkpoint_every=ctx.preset.checkpoint_every,
                                          data=load_distill_data(cfg, ctx.device, train=train),
                                          command=ctx.command, snapshot=True)[-1].run
    syn = load_synthetic(snap)
    rec = distilled.record if distilled is not None else _read_record(run_dir)
    spec = ctx.preset.eval_spec(cell.protocol)
    t0 = time.perf_counter()
    ev = ctx.evaluate(syn["images"], syn["labels"], cell.seed, spec=spec, cache=run_dir / NETWORKS,
                      iteration=cell.budget)
    eval_seconds = time.perf_counter() - t0
    append_evaluation(run_dir, ev.as_dict(), command=ctx.command, device=ctx.device, iteration=cell.budget)
    archs = ctx.evaluate_archs(syn["images"], syn["labels"], cell.seed, spec=spec, cache=run_dir / NETWORKS,
                               iteration=cell.budget, run_dir=run_dir)
    subset_size = int(PracticalSubset(train, cell.pipc, seed=cell.seed).tensors()[0].shape[0])
    same_run = rec.get("iterations") == cell.budget
    return {**_base_record(ctx, cell, 100.0 * subset_size / len(train)), **_point_fields(cell, spec),
            "method": method, "config": dataclasses.asdict(cfg), "resolved": rec.get("resolved"),
            **_eval_fields(ev, eval_seconds), **_archs(archs),
            "distill_seconds": rec.get("seconds") if same_run else None,
            "seconds_per_iteration": rec.get("seconds_per_iteration"), "iterations": cell.budget,
            "final": _history_at(rec, cell.budget), "fidelity": rec.get("fidelity") if same_run else None,
            "resumed": distilled is None or bool(distilled.record.get("invocations", [{}])[-1].get("from")),
            "run_dir": str(run_dir.relative_to(ctx.out)), **ctx.provenance()}


def _point_fields(cell: Cell, spec: EvalSpec) -> dict[str, Any]:
    return {"budget": cell.budget, "protocol": cell.protocol, "eval_spec": dataclasses.asdict(spec)}


def _read_record(run_dir: Path) -> dict[str, Any]:
    import json

    path = run_dir / "record.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _history_at(rec: dict[str, Any], iteration: int) -> dict[str, Any]:
    """The last logged losses at or before ``iteration``."""
    rows = [h for h in rec.get("history", []) if h.get("iteration", 0) < iteration]
    return rows[-1] if rows else {}


def run_random(ctx: Context, cell: Cell) -> dict[str, Any]:
    """The random-real baseline: ``ipc`` images per class drawn from the cell's practical subset
    with ``torch.Generator().manual_seed(seed)``, evaluated like every set."""
    train = ctx.data(train=True)
    subset = PracticalSubset(train, cell.pipc, seed=cell.seed)
    images, labels = real_init(cell.ipc, num_classes=train.num_classes, image_shape=tuple(train.image_shape),
                               dataset=subset, generator=torch.Generator().manual_seed(cell.seed))
    run_dir = ctx.runs_dir / cell.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"draw": "real_init", "generator_seed": cell.seed, "ipc": cell.ipc, "pipc": cell.pipc}
    path = run_dir / "synthetic.pt"
    if path.is_file():  # drawn before: the same draw (checked), never overwritten
        old = load_synthetic(path)
        if not (torch.equal(old["images"], images) and torch.equal(old["labels"], labels)):
            raise CheckpointError(f"{cell}: {path} holds another draw than seed {cell.seed} gives now; move it away")
    else:
        save_synthetic(path, images, labels, method=RANDOM_COLUMN, config=config, mean=train.mean, std=train.std,
                       iteration=0)
    spec = ctx.preset.eval_spec(cell.protocol)
    t0 = time.perf_counter()
    ev = ctx.evaluate(images, labels, cell.seed, spec=spec, cache=run_dir / NETWORKS, iteration=0)
    eval_seconds = time.perf_counter() - t0
    append_evaluation(run_dir, ev.as_dict(), command=ctx.command, device=ctx.device, iteration=0)
    archs = ctx.evaluate_archs(images, labels, cell.seed, spec=spec, cache=run_dir / NETWORKS, iteration=0,
                               run_dir=run_dir)
    point = _point_fields(cell, spec) if cell.budget is not None else {}
    return {**_base_record(ctx, cell, subset.access_percent), **point, "method": RANDOM_COLUMN, "config": config,
            **_eval_fields(ev, eval_seconds), **_archs(archs), "distill_seconds": 0.0, "seconds_per_iteration": 0.0,
            "iterations": 0, "resumed": False, "run_dir": str(run_dir.relative_to(ctx.out)), **ctx.provenance()}


def blend_sources(ctx: Context, cell: Cell) -> list[Path]:
    """The synthetic sets a blend cell averages; CheckpointError naming those not finished yet."""
    if cell.budget is not None:
        paths = [snapshot_path(ctx.runs_dir / dataclasses.replace(cell, column=c).run_name, cell.budget)
                 for c in BLEND_SOURCES]
    else:
        paths = [ctx.runs_dir / dataclasses.replace(cell, column=c).run_name / "synthetic.pt" for c in BLEND_SOURCES]
    missing = [c for c, p in zip(BLEND_SOURCES, paths) if not p.is_file()]
    if missing:
        raise CheckpointError(f"{cell}: {', '.join(missing)} not distilled yet")
    return paths


def run_blend(ctx: Context, cell: Cell) -> dict[str, Any]:
    """Evaluate the pixel-wise mean of the row's dsv_noise and dm synthetic sets (Fig. 3)."""
    if cell.column != BLEND_COLUMN:
        raise ConfigError(f"run_blend needs a {BLEND_COLUMN} cell, got {cell.column}")
    paths = blend_sources(ctx, cell)
    sets = [load_synthetic(p) for p in paths]
    a, b = sets
    if a["images"].shape != b["images"].shape or not torch.equal(a["labels"], b["labels"]):
        raise ConfigError(f"{cell}: {paths[0]} and {paths[1]} hold differently shaped or labelled sets")
    images = (a["images"] + b["images"]) / 2  # (N, C, H, W): same class order in both sets
    run_dir = ctx.runs_dir / cell.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"sources": list(BLEND_SOURCES), "weights": [0.5, 0.5],
              "source_runs": [str((p.parent if cell.budget is None else p).relative_to(ctx.out)) for p in paths]}
    point = {}
    if cell.budget is None:
        save_synthetic(run_dir / "synthetic.pt", images, a["labels"], method="blend", config=config,
                       mean=a.get("mean"), std=a.get("std"))
        ev = None
    else:  # one blended set per budget, beside the sources' snapshots
        target = snapshot_path(run_dir, cell.budget)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            save_synthetic(target, images, a["labels"], method="blend", config=config, mean=a.get("mean"),
                           std=a.get("std"), iteration=cell.budget)
        point = _point_fields(cell, ctx.preset.eval_spec(cell.protocol))
    t0 = time.perf_counter()
    if cell.budget is None:
        ev = ctx.evaluate(images, a["labels"], cell.seed)
    else:
        ev = ctx.evaluate(images, a["labels"], cell.seed, spec=ctx.preset.eval_spec(cell.protocol),
                          cache=run_dir / NETWORKS, iteration=cell.budget)
        append_evaluation(run_dir, ev.as_dict(), command=ctx.command, device=ctx.device, iteration=cell.budget)
    eval_seconds = time.perf_counter() - t0
    if cell.budget is None:
        archs = ctx.evaluate_archs(images, a["labels"], cell.seed)
    else:
        archs = ctx.evaluate_archs(images, a["labels"], cell.seed, spec=ctx.preset.eval_spec(cell.protocol),
                                   cache=run_dir / NETWORKS, iteration=cell.budget, run_dir=run_dir)
    subset = PracticalSubset(ctx.data(train=True), cell.pipc, seed=cell.seed)
    return {**_base_record(ctx, cell, subset.access_percent), **point, "method": "blend", "config": config,
            **_eval_fields(ev, eval_seconds), **_archs(archs), "distill_seconds": 0.0, "seconds_per_iteration": 0.0,
            "iterations": 0, "resumed": False, "run_dir": str(run_dir.relative_to(ctx.out)), **ctx.provenance()}
