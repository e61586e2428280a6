"""``dkkt demo``: DM vs DM+DKKT (and DSV) on Fashion-MNIST, ipc 1, pipc 10, on the CPU.

Runs from the files shipped in ``dkkt_plugin/assets`` (:mod:`dkkt_plugin.packaged`; no download,
no GPU): a ConvNet edge model trained by ``dkkt pretrain`` on the full Fashion-MNIST training set,
the practical subset (10 training images per class) and a class-balanced test subset. Everything
here is CPU-sized: far fewer iterations and evaluation epochs than the paper's protocol, and a
test subset instead of the 10 000 test images. This module imports torch only when a demo runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError
# packaged_edge_model and packaged_transfer_model stay importable from here too
from .packaged import (EDGE, EDGE_MODELS, PRACTICAL, TEST, asset_path, load_images,  # noqa: F401
                       packaged_edge_model, packaged_transfer_model)

RUN_FILES = ("checkpoint.pt", "synthetic.pt", "record.json")  # any of them: the folder holds a run


@dataclass(frozen=True)
class DemoConfig:
    """The demo's CPU-sized settings (the paper: 20 000 iterations, 5000 SAM epochs)."""

    iterations: int = field(default=150, metadata={
        "help": "distillation iterations of dm and dm_dkkt (the paper: 20 000)"})
    dsv_iterations: int = field(default=1000, metadata={
        "help": "DSV's own default budget (a DSV step is ~5x cheaper than a DM+DKKT step)"})
    eval_epochs: int = field(default=200, metadata={"help": "the dm protocol (SGD + DSA) scaled from 1000 epochs"})
    num_eval: int = field(default=2, metadata={"help": "evaluation runs (fresh ConvNets) per method"})
    seed: int = field(default=0, metadata={"help": "distillation seed; evaluation run r uses seed + r"})
    methods: tuple[str, ...] = field(default=("dm", "dm_dkkt", "dsv"), metadata={
        "help": "registered methods to compare, comma-separated"})


def check_out(out_dir: str | Path, methods: tuple[str, ...], resume: bool = False) -> list[str]:
    """The methods whose runs ``out_dir`` already holds; a CheckpointError when there are any and
    ``resume`` is false (a demo folder is continued only when asked, never overwritten).

    Example:
        >>> check_out("a-folder-that-does-not-exist", ("dm", "dsv"))
        []
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file, not a folder; choose another --out")
    found = [m for m in methods if any((out / m / name).exists() for name in RUN_FILES)]
    if found and not resume:
        raise CheckpointError(f"{out} already holds a demo run ({', '.join(m + '/' for m in found)}): pass --resume "
                              "to continue it, or choose another --out (it is never overwritten)")
    return found


def _precisions(record: dict) -> str:
    """``"dm.real bf16, dkkt.features fp32"``: the precision of each pass a run's record says ran."""
    passes = (record.get("runtime") or {}).get("passes") or {}
    return ", ".join(f"{name} {entry.get('precision')}" for name, entry in passes.items())


def run_demo(out_dir: str | Path, cfg: DemoConfig = DemoConfig(), *, device: Any = "cpu",
             command: str = "", echo=print, resume: bool = False) -> list[dict]:
    """Distil with each method, evaluate on the packaged test subset, print and return a table.

    ``out_dir`` must not hold a demo run already unless ``resume`` is true (:func:`check_out`):
    then each method's run continues from its checkpoint (one without starts) and is evaluated
    again.
    """
    from . import runtime
    from .data.sources import FASHION_MNIST_CLASSES
    from .engine import build_config, distill_then_evaluate
    from .evaluation import evaluate_synthetic, get_protocol
    from .methods.base import DistillData
    from .pretrain import load_edge_model
    from .provenance import resolved_threads

    out = Path(out_dir)
    check_out(out, cfg.methods, resume)
    edge, meta = load_edge_model(asset_path(EDGE), device=device)
    real, real_labels, practical = load_images(PRACTICAL)
    test_x, test_y, test_meta = load_images(TEST)
    data = DistillData(real, real_labels, 10, (practical["mean"],), (practical["std"],), edge,
                       classes=FASHION_MNIST_CLASSES)  # class names label the image grids
    protocol = get_protocol("dm", cfg.eval_epochs)
    speed, native = runtime.settings(), runtime.native_bf16(device)
    bf16 = runtime.runs_bf16(test_x[:1].to(device), speed.precision)  # the evaluation training's precision
    share = 100 * len(real) / meta.get("num_train", 60000)
    echo(f"dkkt demo (CPU-sized, not the paper's protocol): Fashion-MNIST, ipc 1, pipc 10 "
         f"({len(real)} real images, {share:.3f} % of the training set), "
         f"{cfg.iterations} distillation iterations, DSV {cfg.dsv_iterations} (paper: 20000); evaluation: "
         f"{protocol.describe('bf16' if bf16 else 'fp32')}{'' if bf16 else ', fp32 training'}, "
         f"{cfg.num_eval} run{'s' if cfg.num_eval != 1 else ''}, on {len(test_x)} test images")
    passes = ("bf16 autocast for the passes with a bf16 path" + (" (dsv: fp32)" if speed.precision == "auto" else "")
              if speed.precision == "bf16" or (speed.precision == "auto" and native) else "fp32 for every pass")
    echo(f"precision: {passes} (--precision {speed.precision}; {device} "
         f"{'computes bf16 natively' if native else 'has no native bf16'}); backend: {speed.backend}; "
         f"threads: {resolved_threads()}")
    echo(f"edge model: fmnist ({EDGE_MODELS['fmnist'][1]}, trained by dkkt pretrain on "
         f"{meta.get('num_train', 60000)} images)")
    rows = []
    for method in cfg.methods:
        iterations = cfg.dsv_iterations if method == "dsv" else cfg.iterations
        run_cfg = build_config(method, dataset="fashion_mnist", ipc=1, pipc=10, iterations=iterations,
                               seed=cfg.seed, edge_model="fmnist")
        start = time.time()

        def evaluate(images, labels, method=method):
            return evaluate_synthetic(images, labels, test_x, test_y, protocol=protocol, num_eval=cfg.num_eval,
                                      seed=cfg.seed, device=device, desc=f"evaluate {method}")

        [stop] = distill_then_evaluate(method, run_cfg, out / method, evaluate=evaluate, device=device, data=data,
                                       command=command, resume=resume and (out / method / "checkpoint.pt").exists())
        res, ev = stop.run, stop.evaluation
        rows.append({"method": method, "accuracy": 100 * ev.mean, "std": 100 * ev.std,
                     "seconds": time.time() - start, "grid": str(res.out_dir / "synthetic.png")})
        detail = _precisions(res.record)
        echo(f"  {method:<8} {100 * ev.mean:6.2f} ± {100 * ev.std:4.2f} %  ({rows[-1]['seconds']:.0f} s"
             + (f"; {detail})" if detail else ")"))
    echo("")
    echo("| method | accuracy (%) | time (s) | image grid |")
    echo("|---|---|---|---|")
    for r in rows:
        echo(f"| {r['method']} | {r['accuracy']:.2f} ± {r['std']:.2f} | {r['seconds']:.0f} | {r['grid']} |")
    return rows
