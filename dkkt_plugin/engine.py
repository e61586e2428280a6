"""Running a distillation: data, method, loop, checkpoints, and what a run leaves behind.

A run directory holds:
    checkpoint.pt      the full state every ``checkpoint_every`` iterations (atomic writes)
    synthetic.pt       images, labels, multipliers (if any), config, normalisation
    synthetic.png      the synthetic images, labelled with their class names (ipc > 1: one row per
                       class; ipc 1: a grid with each name above its image)
    loss.png           the loss (and the DKKT terms) against the iteration (needs matplotlib)
    record.json        the distillation: the config asked for and ``resolved`` (every "auto" as it
                       ran), losses over time, timings, threads, provenance, and one
                       entry per invocation (``invocations``: from / to iteration, seconds, command)
    evaluations.jsonl  one line per evaluation of the set, with the iteration of the set it
                       evaluated (:func:`append_evaluation`)
    snapshots/         ``it<N>.pt``: the set at iteration N, for every N a run was asked to stop at
                       with ``snapshot=True`` (``dkkt distill --eval-at``, the benchmark grid)

A run never goes backwards: resuming with fewer iterations than the checkpoint holds is a
:class:`~dkkt_plugin.errors.CheckpointError`; resuming with exactly as many changes nothing.

Example:
    >>> cfg = build_config("dm", {"augment.strategy": "crop"}, ipc=1, pipc=10, iterations=20)
    >>> cfg.augment.strategy, cfg.pipc
    ('crop', 10)
    >>> result = distill("dm", out_dir="runs/dm", ipc=1, iterations=20)   # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from . import config as configs
from . import registry, runtime
from .errors import CheckpointError, ConfigError, NonFiniteLossError
from .fidelity import fidelity
from .fileio import load_torch, save_torch, write_atomic
from .methods.base import DistillConfig, DistillData, Method
from .progress import LogLines, progress_bar
from .provenance import provenance, resolve_device, resolved_threads

CHECKPOINT_FORMAT = "dkkt-run/1"
SYNTHETIC_FORMAT = "dkkt-synthetic/1"


def method_class(name: str) -> type[Method]:
    """The registered method class ``name`` (group ``dkkt_plugin.methods``)."""
    return registry.load("methods", name)


def build_config(method: str, overrides: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> DistillConfig:
    """The method's config with ``overrides`` (dotted keys, e.g. ``{"dkkt.distance": "l1"}``) and
    keyword overrides of top-level fields; a setting the method does not have is a ConfigError."""
    cls = method_class(method).config_class
    try:
        return configs.build(cls, {**dict(overrides or {}), **kwargs})
    except ConfigError as exc:
        raise ConfigError(f"method {method!r}: {exc}") from None


def load_distill_data(cfg: DistillConfig, device: Any = "cpu", train=None, edge=None) -> DistillData:
    """The practical subset of ``cfg.dataset`` (chosen with ``cfg.seed``) and the edge model.

    ``train``: the already loaded training set (an ImageDataset), to avoid reading it again.
    ``edge``: a :class:`dkkt_plugin.pretrain.EdgeSpec` for an edge model that does not record its
    architecture, normalisation, image size or class count (``--edge-arch`` and co.).
    """
    from .data.practical import PracticalSubset
    from .pretrain import load_edge_model

    if train is None:
        train = registry.load("datasets", cfg.dataset)(cfg.data_root, train=True)
    subset = PracticalSubset(train, cfg.pipc, seed=cfg.seed)
    x, y = subset.tensors()
    model = None
    if cfg.edge_model:
        model, meta = load_edge_model(cfg.edge_model, device=device, edge=edge, image_shape=tuple(train.image_shape),
                                      num_classes=train.num_classes)
        if meta.get("source") == "checkpoint" and meta.get("dataset") != cfg.dataset:
            raise ConfigError(f"edge model {cfg.edge_model} was trained on {meta.get('dataset')!r}, "
                              f"not {cfg.dataset!r}; pretrain one with `dkkt pretrain --dataset {cfg.dataset}`")
        check_edge_model(model, cfg.edge_model, tuple(train.image_shape), train.num_classes, meta=meta,
                         mean=tuple(train.mean), std=tuple(train.std))
    elif edge is not None and edge.given:
        raise ConfigError("--edge-arch, --edge-mean, --edge-std, --edge-image-size and --edge-num-classes describe "
                          "the edge model: give it with --edge-model PATH")
    return DistillData(x, y, train.num_classes, tuple(train.mean), tuple(train.std), model,
                       classes=tuple(getattr(train, "classes", ()) or ()) or None,
                       data_root=getattr(train, "root", None))


def check_edge_model(model: torch.nn.Module, path: Any, image_shape: tuple, num_classes: int, *,
                     meta: Optional[Mapping[str, Any]] = None, mean: Optional[tuple] = None,
                     std: Optional[tuple] = None) -> None:
    """ConfigError (one line) unless ``model`` takes the data's images and has its classes.

    Compares what the model declares (``meta["arch"]``'s ``channels``, ``image_size``,
    ``num_classes`` and ``meta``'s ``mean`` / ``std``, else a ConvNet's ``config``) with the
    data's ``image_shape`` ``(C, H, W)``, ``num_classes`` and normalisation ``mean`` / ``std``
    (equal within 1e-3),
    then runs the model on a batch of two zero images (``torch.no_grad``, eval mode) and checks
    its output is ``(2, num_classes)``; a failure inside the model becomes that line too.
    """
    from .losses.dkkt import eval_mode

    meta = dict(meta or {})
    declared = dict(getattr(model, "config", None) or {}) if isinstance(getattr(model, "config", None), dict) else {}
    declared.update({k: v for k, v in (meta.get("arch") or {}).items() if v is not None})
    want = {"channels": image_shape[0], "image_size": image_shape[-1], "num_classes": num_classes}
    wrong = [f"{k} {declared[k]} (the data needs {need})" for k, need in want.items()
             if k in declared and declared[k] != need]
    if mean is not None and meta.get("mean") is not None:
        got_mean, got_std = tuple(meta["mean"]), tuple(meta.get("std") or ())
        if len(got_mean) != len(mean) or len(got_std) != len(std) or any(
                abs(a - b) > 1e-3 for a, b in zip((*got_mean, *got_std), (*mean, *std))):
            wrong.append(f"normalisation mean {_floats(got_mean)} std {_floats(got_std)} (the data is normalised "
                         f"with mean {_floats(mean)} std {_floats(std)})")
    if wrong:
        raise ConfigError(f"edge model {path} does not fit the data: {', '.join(wrong)}; use an edge model trained on "
                          "this dataset (`dkkt pretrain`), or correct the --edge-* flags")
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    probe = torch.zeros(2, *image_shape, device=first.device if first is not None else "cpu",
                        dtype=first.dtype if first is not None else torch.float32)  # (2, C, H, W)
    from .pretrain import error_line

    try:
        with torch.no_grad(), eval_mode(model):
            out = model(probe)
    except Exception as exc:  # any failure inside the user's model: its message, on one line
        raise ConfigError(f"edge model {path} cannot take the data's images ({image_shape[0]} channel(s), "
                          f"{image_shape[1]}x{image_shape[2]} px): {error_line(exc)}; use an edge model trained on "
                          "images of this shape") from None
    if not torch.is_tensor(out) or out.ndim != 2 or out.shape[0] != 2:
        what = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else type(out).__name__
        raise ConfigError(f"edge model {path} returns {what} for 2 images, not logits of shape (2, classes); "
                          "give a classifier whose forward returns the logits")
    if out.shape[1] != num_classes:
        raise ConfigError(f"edge model {path} does not fit the data: num_classes {out.shape[1]} (its outputs; the "
                          f"data needs {num_classes}); use an edge model trained on this dataset's classes")


def _floats(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


@dataclasses.dataclass
class RunResult:
    """What :func:`run_distillation` returns (the same is written to ``out_dir``)."""

    out_dir: Path
    images: torch.Tensor
    labels: torch.Tensor
    record: dict


def safe_on_resume(key: str) -> bool:
    """Settings a resumed run may change: ``iterations`` (extend or shorten a run) and the
    learning rates (top-level fields named ``lr_*``, e.g. after a NaN stop). Every other setting
    must match the checkpoint's; changes are recorded in the record's ``resumes``."""
    return key == "iterations" or key.startswith("lr_")


def _fingerprint(cfg: DistillConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if not safe_on_resume(k)}


def _load_checkpoint(path: Path, method: str, cfg: DistillConfig) -> tuple[dict, dict]:
    """The checkpoint's state and the safe settings changed since (``{key: [old, new]}``)."""
    state = load_torch(path, "run checkpoint", CHECKPOINT_FORMAT,
                       "move it away to start again, or restore a good copy")
    if state["method"] != method:
        raise CheckpointError(f"{path} belongs to a {state['method']!r} run, not {method!r}; "
                              "use another --out or the same --method")
    old, retired = runtime.retired_settings(state["fingerprint"])  # speed keys of earlier versions
    new = _fingerprint(cfg)
    note = runtime.retired_note(retired)
    if note:
        warnings.warn(f"{path}: {note}", RuntimeWarning, stacklevel=3)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and not safe_on_resume(k))
    if diff:
        raise CheckpointError(
            f"{path} was written with different settings ("
            + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
            + "); resume with the original flags (only --iterations and learning rates may change) "
              "or use another --out")
    before, now = state["config"], asdict(cfg)
    changed = {k: [before.get(k), v] for k, v in now.items() if safe_on_resume(k) and before.get(k) != v}
    return state, changed


def _lower_lr(cfg: DistillConfig, current: float) -> float:
    """The image learning rate to suggest after a NaN stop: a tenth of ``current``, or the
    method's default when that is lower still (a far too large --lr-img)."""
    default = next((f.default for f in dataclasses.fields(cfg) if f.name == "lr_img"), None)
    lower = current / 10
    return default if isinstance(default, (int, float)) and default < lower else lower


def run_distillation(method: str, cfg: DistillConfig, out_dir: str | os.PathLike, *,
                     device: Any = "cpu", resume: bool = False, checkpoint_every: int = 50,
                     data: Optional[DistillData] = None, command: str = "",
                     transfer_model: Optional[torch.nn.Module] = None, snapshot: bool = False) -> RunResult:
    """Distil with ``method`` under ``cfg``, checkpointing into ``out_dir``.

    Args:
        method: registered method name (``dm``, ``dm_star``, ``dc``, ``dsa``, ``dsv``, ``dm_dkkt``).
        cfg: the method's config (see :func:`build_config`).
        out_dir: run directory; an existing checkpoint there is continued only with ``resume``.
        device: torch device.
        resume: continue from ``out_dir/checkpoint.pt`` (error if there is none).
        checkpoint_every: iterations between checkpoints.
        data: the practical data (loaded from ``cfg`` when omitted).
        command: the command line, kept in the record.
        transfer_model: an independent classifier whose accuracy on the synthetic images goes into
            the record's ``fidelity`` (with the high-frequency share and the edge model's accuracy).
        snapshot: also keep the final set as ``out_dir/snapshots/it<iterations>.pt``, so that a run
            continued later still has it (evaluations along one trajectory).

    A resumed run whose checkpoint is already at ``cfg.iterations`` (and whose outputs hold that
    set) returns them as they are, with ``iterations_run`` 0; fewer iterations than the checkpoint
    holds raise CheckpointError.

    Raises:
        CheckpointError: a checkpoint exists without ``resume``, or is corrupt or mismatched
            (only ``iterations`` and the learning rates may change on resume: :func:`safe_on_resume`).
        NonFiniteLossError: the loss became NaN/inf; the state before the update that led to it
            is checkpointed, and the message says how to resume with a lower learning rate.
    """
    out = Path(out_dir)
    ckpt = out / "checkpoint.pt"
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every (--checkpoint-every) must be a positive number of iterations, "
                          f"got {checkpoint_every!r}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file, not a run directory; choose another --out")
    if (out / "synthetic.pt").exists() and not ckpt.exists():
        raise CheckpointError(f"{out} holds a synthetic set but no checkpoint: it is never overwritten; "
                              "choose another --out or move that folder away")
    if ckpt.exists() and not resume:
        raise CheckpointError(f"{ckpt} exists: pass --resume to continue that run, or choose "
                              "another --out (it is never overwritten silently)")
    if resume and not ckpt.exists():
        raise CheckpointError(f"nothing to resume: {ckpt} does not exist")
    state, changed = _load_checkpoint(ckpt, method, cfg) if resume else (None, {})
    if state is not None and cfg.iterations < state["iteration"]:
        raise CheckpointError(
            f"{ckpt} is at iteration {state['iteration']}, past the {cfg.iterations} iterations asked for: a run "
            f"never goes backwards; pass --iterations {state['iteration']} or more to continue it (the sets of "
            f"earlier iterations exist only as {out}/snapshots/it<N>.pt where they were saved)")
    if state is not None and cfg.iterations == state["iteration"]:
        done = _finished(out, state["iteration"])
        if done is not None:  # already there: nothing runs and nothing is rewritten
            if snapshot:
                _save_snapshot(out, state["iteration"])
            return done
    cls = method_class(method)
    data = data if data is not None else load_distill_data(cfg, device)
    m = cls(cfg, data, device=device)
    history: list[dict] = []
    resumes: list[dict] = []  # safe settings changed on --resume, with the iteration they apply from
    start, seconds = 0, 0.0
    if state is not None:
        m.load_state_dict(state["method_state"])  # keeps this config's learning rates
        start, history, seconds = state["iteration"], state["history"], state["seconds"]
        resumes = list(state.get("resumes", []))
        if changed:
            resumes.append({"iteration": start, "changed": changed, "date": provenance()["date"]})
    invocations = list(state.get("invocations", [])) if state is not None else []
    out.mkdir(parents=True, exist_ok=True)
    record = {"method": method, "config": asdict(cfg), **provenance(command=command, device=device),
              "num_classes": data.num_classes, "real_images": int(data.real.shape[0])}
    record["resolved"] = m.resolved_config()  # every "auto" / None setting as it runs
    record["runtime"] = m.runtime_record()  # the speed switch and what each pass runs
    record["threads"] = resolved_threads()
    if resumes:
        record["resumes"] = resumes
    invocation = {"from": start, "to": cfg.iterations, "seconds": 0.0, "command": command,
                  "date": record.get("date"), "threads": record["threads"]}

    def checkpoint(iteration: int, method_state: dict) -> None:
        invocation.update(to=iteration, seconds=round(seconds - seconds_before, 3))
        save_torch({"format": CHECKPOINT_FORMAT, "method": method, "fingerprint": _fingerprint(cfg),
                    "config": asdict(cfg), "iteration": iteration, "history": history, "resumes": resumes,
                    "seconds": seconds, "invocations": [*invocations, invocation],
                    "method_state": method_state}, ckpt)

    seconds_before = seconds
    log_every = max(1, cfg.iterations // 500)
    bar = progress_bar(range(start, cfg.iterations), desc=f"distill {method}", unit="it",
                       initial=start, total=cfg.iterations)
    lines = LogLines(f"distill {method}", cfg.iterations, start, shown=not bar.disable)  # off a terminal
    prev = None  # the state before the previous step: a non-finite loss undoes the update that led to it
    for it in bar:
        good = m.state_dict()  # the state before this step
        t0 = time.perf_counter()
        try:
            log = m.step(it)
        except NonFiniteLossError as exc:
            at, state = (it - 1, prev) if prev is not None else (it, good)
            history[:] = [h for h in history if h["iteration"] < at]  # iteration `at` runs again
            checkpoint(at, state)
            lower = _lower_lr(cfg, m.image_lr)
            raise NonFiniteLossError(
                f"{exc}; the run stopped and {ckpt} holds the state at iteration {at}, before the update that "
                f"made it non-finite. Rerun the same command with `--resume --lr-img {lower:g}` (a lower "
                "learning rate; lower loss weights help too), or start again with another --out"
            ) from None
        prev = good
        seconds += time.perf_counter() - t0
        if it % log_every == 0 or it == cfg.iterations - 1:
            history.append({"iteration": it, **log})
            bar.set_postfix(loss=f"{log['loss']:.4g}")
        if (it + 1) % checkpoint_every == 0 and it + 1 < cfg.iterations:
            checkpoint(it + 1, m.state_dict())
        lines.step(it + 1, loss=log["loss"])
    checkpoint(cfg.iterations, m.state_dict())
    record.update(history=history, iterations=cfg.iterations, iterations_run=cfg.iterations - start,
                  seconds=round(seconds, 3), invocation_seconds=round(seconds - seconds_before, 3),
                  seconds_per_iteration=seconds / cfg.iterations if cfg.iterations else 0.0,
                  invocations=[*invocations, invocation])
    images, labels = m.images.detach().cpu(), m.labels.cpu()
    record["fidelity"] = fidelity(m.images.detach(), m.labels, edge_model=data.edge_model,
                                  transfer_model=transfer_model)
    save_synthetic(out / "synthetic.pt", images, labels, method=method, config=asdict(cfg),
                   mean=data.mean, std=data.std, extra=m.extra_outputs(), iteration=cfg.iterations)
    if snapshot:
        _save_snapshot(out, cfg.iterations)
    from .viz import save_image_grid, save_loss_plot

    save_image_grid(out / "synthetic.png", images, labels=labels, class_names=data.classes, mean=data.mean,
                    std=data.std)
    write_record(out, record)
    save_loss_plot(record, out / "loss.png")
    return RunResult(out, images, labels, record)


SNAPSHOTS = "snapshots"


def checkpoint_iteration(run_dir: str | os.PathLike) -> Optional[int]:
    """The iteration ``run_dir/checkpoint.pt`` holds (None: no checkpoint)."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        return None
    return int(load_torch(path, "run checkpoint", CHECKPOINT_FORMAT,
                          "move it away to start again, or restore a good copy")["iteration"])


def snapshot_path(run_dir: str | os.PathLike, iteration: int) -> Path:
    """Where a run keeps its set at ``iteration`` (``run_dir/snapshots/it<iteration>.pt``)."""
    return Path(run_dir) / SNAPSHOTS / f"it{int(iteration)}.pt"


def _save_snapshot(out: Path, iteration: int) -> None:
    """Copy ``synthetic.pt`` (the set at ``iteration``) to its snapshot, once."""
    path = snapshot_path(out, iteration)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (out / "synthetic.pt").read_bytes())


def _finished(out: Path, iteration: int) -> Optional[RunResult]:
    """The run's outputs when they hold the set at ``iteration`` (None: they must be written)."""
    try:
        syn = load_synthetic(out / "synthetic.pt")
        record = json.loads((out / "record.json").read_text(encoding="utf-8"))
    except (CheckpointError, OSError, ValueError):
        return None
    if syn.get("iteration") != iteration or record.get("iterations") != iteration:
        return None
    record = {**record, "iterations_run": 0, "invocation_seconds": 0.0}
    return RunResult(out, syn["images"], syn["labels"], record)


def save_synthetic(path: Path, images: torch.Tensor, labels: torch.Tensor, **meta: Any) -> None:
    """Write a synthetic set (``images``, ``labels`` and metadata) atomically."""
    extra = meta.pop("extra", {})
    save_torch({"format": SYNTHETIC_FORMAT, "images": images, "labels": labels, **extra, **meta}, path)


def load_synthetic(path: str | os.PathLike) -> dict:
    """Read a synthetic set written by :func:`save_synthetic` (images, labels, config, ...)."""
    path = Path(path)
    if path.is_dir():
        path = path / "synthetic.pt"
    return load_torch(path, "synthetic set", SYNTHETIC_FORMAT, "create one with `dkkt distill`")


def write_record(out_dir: Path, record: dict) -> Path:
    """Write ``record.json`` atomically."""
    return write_atomic(Path(out_dir) / "record.json", json.dumps(record, indent=1, default=str).encode())


EVALUATIONS = "evaluations.jsonl"


def append_evaluation(run_dir: str | os.PathLike, evaluation: Mapping[str, Any], *, command: str = "",
                      device: Any = None, iteration: Optional[int] = None) -> Path:
    """Add one evaluation (e.g. ``EvalResult.as_dict()``) to ``run_dir/evaluations.jsonl``, with
    its provenance and ``iteration``, the distillation iteration of the set it evaluated (default:
    the iteration of ``run_dir/synthetic.pt``). The file is rewritten atomically, so a killed
    process never leaves half a line."""
    path = Path(run_dir) / EVALUATIONS
    if iteration is None and (Path(run_dir) / "synthetic.pt").is_file():
        iteration = load_synthetic(run_dir).get("iteration")
    old = path.read_bytes() if path.is_file() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    line = json.dumps({"iteration": iteration, **evaluation, **provenance(command=command, device=device)},
                      default=str)
    return write_atomic(path, old + line.encode() + b"\n")


def read_evaluations(run_dir: str | os.PathLike) -> list[dict]:
    """Every evaluation recorded in ``run_dir`` (oldest first)."""
    path = Path(run_dir) / EVALUATIONS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclasses.dataclass
class Stop:
    """One stop of :func:`distill_then_evaluate`: the run at ``iteration`` and, when it was
    evaluated there, the evaluation (``None`` otherwise)."""

    iteration: int
    run: RunResult
    evaluation: Any = None


def distill_then_evaluate(method: str, cfg: DistillConfig, out_dir: str | os.PathLike, *,
                          evaluate: Optional[Callable[[torch.Tensor, torch.Tensor], Any]] = None,
                          stops: Sequence[int] = (), evaluate_at: Optional[Sequence[int]] = None,
                          resume: bool = False, device: Any = "cpu", checkpoint_every: int = 50,
                          data: Optional[DistillData] = None, command: str = "",
                          transfer_model: Optional[torch.nn.Module] = None, snapshot: Optional[bool] = None,
                          on_stop: Optional[Callable[[Stop], None]] = None) -> list[Stop]:
    """Distil to ``cfg.iterations``, halting at each of ``stops`` on the way (its set kept as
    ``snapshots/it<N>.pt``), and evaluate the set at the stops of ``evaluate_at`` (default: every
    stop and the end) with ``evaluate(images, labels) -> EvalResult``; each evaluation is appended
    to ``out_dir/evaluations.jsonl`` with its iteration. ``snapshot``: keep the final set too
    (default: when there are stops). The one loop behind ``dkkt distill``, the demo and the
    benchmark grid.

    A resumed run already past a stop skips it (its set may be in ``snapshots/``); the final
    iteration never goes backwards (:func:`run_distillation`).

    Returns:
        One :class:`Stop` per stop reached, in order (``on_stop`` is called with each as it ends).

    Example:
        >>> stops = distill_then_evaluate("dm", build_config("dm", iterations=1000), "runs/dm",
        ...                               evaluate=my_eval, stops=(200,))      # doctest: +SKIP
        >>> [(s.iteration, s.evaluation.mean) for s in stops]                # doctest: +SKIP
        [(200, 0.66), (1000, 0.67)]
    """
    plan = [*sorted({int(b) for b in stops if 0 < int(b) < cfg.iterations}), cfg.iterations]
    wanted = set(plan if evaluate_at is None else evaluate_at)
    data = data if data is not None else load_distill_data(cfg, device)
    done: list[Stop] = []
    for stop in plan:
        at = checkpoint_iteration(out_dir) if resume else None
        if at is not None and at > stop and stop != cfg.iterations:
            continue
        run = run_distillation(method, dataclasses.replace(cfg, iterations=stop), out_dir, device=device,
                               resume=resume, checkpoint_every=checkpoint_every, data=data, command=command,
                               transfer_model=transfer_model, snapshot=len(plan) > 1 if snapshot is None else snapshot)
        resume = True
        evaluation = None
        if evaluate is not None and stop in wanted:
            evaluation = evaluate(run.images, run.labels)
            append_evaluation(out_dir, evaluation.as_dict(), command=command, device=device, iteration=stop)
        done.append(Stop(stop, run, evaluation))
        if on_stop is not None:
            on_stop(done[-1])
    return done


def distill(method: str = "dm_dkkt", out_dir: str | os.PathLike = "runs/distill", *,
            overrides: Optional[Mapping[str, Any]] = None, device: Any = "auto", resume: bool = False,
            checkpoint_every: int = 50, data: Optional[DistillData] = None, command: str = "",
            **settings: Any) -> RunResult:
    """Distil a synthetic set in one call: :func:`build_config` then :func:`run_distillation`.

    Args:
        method: registered method name.
        out_dir: run directory (checkpoint, synthetic set, record).
        overrides: settings by dotted key, e.g. ``{"dkkt.alpha": 0.1}``.
        device: torch device or ``"auto"``.
        resume: continue the run in ``out_dir``.
        checkpoint_every: iterations between checkpoints.
        data: the practical data, when not loaded from the config's dataset.
        command: recorded with the run.
        **settings: top-level settings (``ipc=1``, ``pipc=10``, ``iterations=200``, ...).

    Example:
        >>> from dkkt_plugin import distill
        >>> run = distill("dm", "runs/dm", ipc=1, pipc=10, iterations=100)   # doctest: +SKIP
        >>> run.images.shape                                                  # doctest: +SKIP
        torch.Size([10, 1, 28, 28])
    """
    cfg = build_config(method, overrides, **settings)
    return run_distillation(method, cfg, out_dir, device=resolve_device(device), resume=resume,
                            checkpoint_every=checkpoint_every, data=data, command=command)
