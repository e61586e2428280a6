"""Grid runner: methods x ipc x pipc x seeds, each cell pretrain -> distill -> evaluate -> JSONL.

Usage (from the repository root)::

    python -m benchmarks.run [--dataset fashion_mnist|cifar10] [--preset paper|cpu|smoke] [options]
    python -m benchmarks.run blend [same options]      # evaluate (DSV+DM)/2 of finished rows
    python -m benchmarks.run merge [--out FILE] INPUT...   # combine shard JSONL files

Finished cells (keyed by dataset/preset/column/ipc/pipc/seed in any ``results*.jsonl`` of the
output folder) are skipped; a cell interrupted during distillation resumes from its checkpoint.
``--shard i/n`` runs every n-th cell (``--shard env`` reads torchrun's RANK/WORLD_SIZE or a SLURM
array's task id / count) and writes ``results.shard-i-of-n.jsonl``; ``merge`` combines them.
Errors are one line on stderr with exit status 2; a failed cell is reported and the grid goes
on (exit status 1 at the end).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # `python benchmarks/run.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dkkt_plugin.engine import method_class  # noqa: E402
from dkkt_plugin.errors import CheckpointError, DatasetError, DkktError  # noqa: E402
from dkkt_plugin.provenance import resolve_device  # noqa: E402

from benchmarks.cells import Context, blend_sources, run_blend, run_cell  # noqa: E402
from benchmarks.grid import (Cell, append_jsonl, blend_cells, build_cells, finished_keys, merge,  # noqa: E402
                             parse_shard, shard, shard_file)
from benchmarks.presets import COLUMN_METHODS, COLUMNS, DEFAULT_PRESET, PRESETS, get_preset, parse_pipc  # noqa: E402

PROG = "python -m benchmarks.run"
DATASETS = {"fashion_mnist": "fashion_mnist", "fmnist": "fashion_mnist", "fashion-mnist": "fashion_mnist",
            "cifar10": "cifar10", "cifar-10": "cifar10"}
DATA_ENV = {"cifar10": "DKKT_CIFAR10_ROOT", "fashion_mnist": "DKKT_FASHION_MNIST_ROOT"}
RESULTS_ROOT = Path("benchmarks") / "results"


def _grid_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist (default) or cifar10")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="default: cpu for fashion_mnist, paper for cifar10")
    p.add_argument("--data-root", default=None, help="dataset folder (cifar10: else $DKKT_CIFAR10_ROOT)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<dataset>-<preset>)")
    p.add_argument("--edge-model", default=None, help="reuse this edge model instead of pretraining one")
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th cell from the i-th; 'env': torchrun / SLURM")
    p.add_argument("--ipc", type=int, nargs="+", default=None, help="ipc rows (default: the preset's)")
    p.add_argument("--pipc", type=parse_pipc, nargs="+", default=None, help="pipc rows, e.g. 10 all")
    p.add_argument("--columns", nargs="+", choices=COLUMNS, default=None, help="methods (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the preset's)")
    p.add_argument("--iterations", type=int, default=None, help="override every column's iterations")
    p.add_argument("--eval-epochs", type=int, default=None, help="override the evaluation epochs")
    p.add_argument("--num-eval", type=int, default=None, help="override the evaluation runs per cell")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (auto: cuda:$LOCAL_RANK or cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def build_parser(command: str) -> argparse.ArgumentParser:
    if command == "merge":
        p = argparse.ArgumentParser(prog=f"{PROG} merge", description="combine JSONL results, one line per key")
        p.add_argument("inputs", nargs="+", help="JSONL files or folders (their results*.jsonl)")
        p.add_argument("--out", default=None, help="merged file (default: <folder>/results.jsonl for one folder)")
        return p
    p = argparse.ArgumentParser(prog=PROG if command == "grid" else f"{PROG} blend",
                                description=__doc__.split("\n\n")[0])
    _grid_options(p)
    if command == "grid":
        p.add_argument("--list", action="store_true", help="print this shard's cells and exit")
        p.add_argument("--pretrain-only", action="store_true", help="only make sure the edge model exists")
        p.add_argument("--no-blend", action="store_true", help="skip the (DSV+DM)/2 blend evaluations")
        p.add_argument("--no-report", action="store_true", help="do not write report.md at the end")
    return p


def _context(args: argparse.Namespace, command_line: str, check_data: bool = True) -> Context:
    dataset = DATASETS.get(args.dataset.lower())
    if dataset is None:
        raise DkktError(f"unknown dataset {args.dataset!r}; choose fashion_mnist or cifar10")
    base = get_preset(args.preset or DEFAULT_PRESET[dataset])
    preset = base.modified(iterations=args.iterations, eval_epochs=args.eval_epochs, num_eval=args.num_eval)
    root = args.data_root or (os.environ.get(DATA_ENV[dataset]) if dataset == "cifar10" else None)
    out = Path(args.out) if args.out else RESULTS_ROOT / f"{dataset}-{base.name}"
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = Context(preset, dataset, root, out, device=resolve_device(args.device), command=command_line)
    if not check_data:
        return ctx
    try:
        ctx.data(train=True), ctx.data(train=False)
    except DatasetError as exc:
        name = "CIFAR-10" if dataset == "cifar10" else "Fashion-MNIST"
        detail = " ".join(str(exc).split())
        raise DatasetError(f"{name} data not found or unreadable: pass --data-root DIR or set "
                           f"{DATA_ENV[dataset]} ({detail})") from None
    return ctx


def _cells(args: argparse.Namespace, ctx: Context) -> tuple[list[Cell], tuple[int, int]]:
    cells = build_cells(ctx.preset, ctx.dataset, ipcs=args.ipc, pipcs=args.pipc, columns=args.columns,
                        seeds=args.seeds)
    return cells, parse_shard(args.shard)


def _header(ctx: Context, todo: int, total: int, where: tuple[int, int]) -> None:
    spec = ctx.preset.evaluation
    print(f"dkkt benchmark: {ctx.dataset}, {ctx.preset.label}", flush=True)
    print(f"  {ctx.preset.summary}; shard {where[0]}/{where[1]}: {total} cells, {total - todo} finished, "
          f"{todo} to run")
    print(f"  evaluation: {spec.protocol} protocol, {spec.epochs or 'its own'} epochs, {spec.num_eval} run(s), "
          f"width {spec.width}; out {ctx.out}; device {ctx.device}, {torch.get_num_threads()} torch thread(s)",
          flush=True)


def _run(ctx: Context, cells: Sequence[Cell], results: Path, runner, label: str) -> int:
    done, failed = finished_keys(ctx.out), 0
    for i, cell in enumerate(cells, 1):
        head = f"[{label} {i}/{len(cells)}] {cell}"
        if cell.key in done:
            print(f"{head}: finished, skipped", flush=True)
            continue
        try:
            rec = runner(ctx, cell)
        except CheckpointError as exc:
            failed += 1
            print(f"{head}: FAILED: {exc}", file=sys.stderr, flush=True)
            continue
        except DkktError as exc:  # e.g. a non-finite loss: this cell fails, the grid goes on
            failed += 1
            print(f"{head}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            continue
        append_jsonl(results, rec)
        print(f"{head}: {100 * rec['mean']:.2f} % (distill {rec['distill_seconds']:.1f} s, "
              f"{rec['seconds_per_iteration']:.3f} s/it; eval {rec['eval_seconds']:.1f} s) "
              f"[{ctx.preset.tag}]", flush=True)
    return failed


def cmd_grid(args: argparse.Namespace, command_line: str) -> int:
    ctx = _context(args, command_line, check_data=not args.list)
    cells, (index, count) = _cells(args, ctx)
    mine = shard(cells, index, count)
    blends = [] if args.no_blend else shard(blend_cells(ctx.preset, cells), index, count)
    if args.list:
        print(f"{ctx.dataset}, {ctx.preset.label}: shard {index}/{count}")
        for cell in [*mine, *blends]:
            print(f"  {cell}")
        return 0
    done = finished_keys(ctx.out)
    _header(ctx, sum(c.key not in done for c in mine), len(mine), (index, count))
    needs_edge = any(method_class(COLUMN_METHODS[c.column][0]).needs_edge_model for c in mine)
    if needs_edge or args.pretrain_only or args.edge_model:
        ctx.ensure_edge_model(args.edge_model)
    if args.pretrain_only:
        print(f"edge model ready: {ctx.edge_model}")
        return 0
    results = shard_file(ctx.out, index, count)
    failed = _run(ctx, mine, results, run_cell, "cell")
    done = finished_keys(ctx.out)
    ready = [b for b in blends if b.key in done or _ready(ctx, b)]
    if len(ready) < len(blends):
        print(f"{len(blends) - len(ready)} blend cell(s) wait for their dm / dsv_noise runs: run "
              f"`{PROG} blend` with the same options once every shard has finished", flush=True)
    failed += _run(ctx, ready, results, run_blend, "blend")
    print(f"results: {results} ({ctx.preset.label})")
    if count == 1 and not args.no_report:
        from benchmarks import report

        report.main([str(ctx.out)])
    return 1 if failed else 0


def _ready(ctx: Context, cell: Cell) -> bool:
    try:
        blend_sources(ctx, cell)
        return True
    except CheckpointError:
        return False


def cmd_blend(args: argparse.Namespace, command_line: str) -> int:
    ctx = _context(args, command_line)
    cells, (index, count) = _cells(args, ctx)
    blends = shard(blend_cells(ctx.preset, cells), index, count)
    print(f"dkkt benchmark blend (DSV+DM)/2: {ctx.dataset}, {ctx.preset.label}: {len(blends)} cell(s)", flush=True)
    failed = _run(ctx, blends, shard_file(ctx.out, index, count), run_blend, "blend")
    return 1 if failed else 0


def cmd_merge(args: argparse.Namespace) -> int:
    inputs = [Path(p) for p in args.inputs]
    if args.out:
        out = Path(args.out)
    elif len(inputs) == 1 and inputs[0].is_dir():
        out = inputs[0] / "results.jsonl"
    else:
        raise DkktError("merge: pass --out FILE (or a single results folder)")
    read, written = merge(inputs, out)
    print(f"merged {read} record(s) into {written} unique key(s): {out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (2 on a clear error, 1 when a cell failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in ("grid", "blend", "merge") else "grid"
    if argv and argv[0] == command:
        argv = argv[1:]
    args = build_parser(command).parse_args(argv)
    command_line = f"{PROG} " + " ".join(shlex.quote(a) for a in ([command] if command != "grid" else []) + argv)
    try:
        if command == "merge":
            return cmd_merge(args)
        return (cmd_grid if command == "grid" else cmd_blend)(args, command_line)
    except DkktError as exc:
        print(f"benchmarks.run: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("benchmarks.run: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
