"""Grid runner: methods x ipc x pipc x seeds, each cell pretrain -> distill -> evaluate -> JSONL.

Usage (from the repository root)::

    python -m benchmarks.run [--dataset fashion_mnist|cifar10] [--preset paper|cpu|smoke] [options]
    python -m benchmarks.run ... --executor local --workers N     # N worker processes (submitit)
    python -m benchmarks.run ... --executor slurm --partition P   # one SLURM job array (submitit)
    python -m benchmarks.run status [same options]     # done / running / failed cells
    python -m benchmarks.run blend [same options]      # evaluate (DSV+DM)/2 of finished rows
    python -m benchmarks.run merge [--out FILE] INPUT...   # combine shard JSONL files

Finished cells (keyed by dataset/preset/column/ipc/pipc/seed in any ``results*.jsonl`` of the
output folder) are skipped, so rerunning a command runs only what is missing or failed; a cell
interrupted during distillation resumes from its checkpoint. Every cell's start and end (with a
failure's reason) goes to ``status.jsonl`` (``benchmarks.worker``). ``--shard i/n`` runs every
n-th cell (``--shard env`` reads torchrun's RANK/WORLD_SIZE or a SLURM array's task id / count)
and writes ``results.shard-i-of-n.jsonl``; ``merge`` combines them. Errors are one line on
stderr with exit status 2; a failed cell is reported and the grid goes on (exit status 1).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import uuid
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # `python benchmarks/run.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dkkt_plugin.engine import method_class  # noqa: E402
from dkkt_plugin.errors import ConfigError, DatasetError, DkktError  # noqa: E402
from dkkt_plugin.provenance import busy_note, choose_threads, resolve_device  # noqa: E402

from benchmarks import executors  # noqa: E402
from benchmarks.cells import Context  # noqa: E402
from benchmarks.grid import Cell, blend_cells, build_cells, finished_keys, merge, parse_shard, shard, shard_file  # noqa: E402
from benchmarks.presets import BLEND_COLUMN, DEFAULT_PRESET, PRESETS, SPLITS, get_preset, parse_pipc  # noqa: E402
from benchmarks.worker import cell_states, work  # noqa: E402

PROG = "python -m benchmarks.run"
DATASETS = {"fashion_mnist": "fashion_mnist", "fmnist": "fashion_mnist", "fashion-mnist": "fashion_mnist",
            "cifar10": "cifar10", "cifar-10": "cifar10"}
DATA_ENV = {"cifar10": "DKKT_CIFAR10_ROOT", "fashion_mnist": "DKKT_FASHION_MNIST_ROOT"}
RESULTS_ROOT = Path("benchmarks") / "results"
COMMANDS = ("grid", "blend", "merge", "status")
EXECUTORS = ("process", "local", "slurm")


def _grid_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist (default) or cifar10")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="default: cpu for fashion_mnist, paper for cifar10")
    p.add_argument("--data-root", default=None, help="dataset folder (cifar10: else $DKKT_CIFAR10_ROOT)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<dataset>-<preset>)")
    p.add_argument("--edge-model", default=None, help="reuse this edge model instead of pretraining one")
    p.add_argument("--transfer-model", default=None,
                   help="an independent classifier whose accuracy on each synthetic set goes into its record's fidelity")
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th cell from the i-th; 'env': torchrun / SLURM")
    p.add_argument("--ipc", type=int, nargs="+", default=None, help="ipc rows (default: the preset's)")
    p.add_argument("--pipc", type=parse_pipc, nargs="+", default=None, help="pipc rows, e.g. 10 all")
    p.add_argument("--columns", nargs="+", default=None, help="columns (methods or ablation variants; default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the preset's)")
    p.add_argument("--iterations", type=int, default=None, help="override every column's iterations")
    p.add_argument("--eval-at", type=int, nargs="+", default=None, metavar="N",
                   help="evaluate each run at these iterations of one trajectory (presets with budgets, e.g. "
                        "reproduce; default: the preset's)")
    p.add_argument("--eval-epochs", type=int, default=None, help="override the evaluation epochs")
    p.add_argument("--num-eval", type=int, default=None, help="override the evaluation runs per cell")
    p.add_argument("--split", choices=SPLITS, default=None,
                   help="evaluate on the test set or on 'val', held-out training images (default: the preset's; "
                        "ablation: val)")
    p.add_argument("--eval-archs", nargs="+", default=None, metavar="NAME",
                   help="also evaluate every set on these architectures (dkkt_plugin.models: mlp, lenet, alexnet, "
                        "vgg11, resnet18, ...; the ConvNet always), num_eval networks each: the report's "
                        "cross-architecture table (a separately named preset, e.g. cpu[archs=mlp/resnet18])")
    p.add_argument("--eval-precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="training precision of the evaluation networks (default: the preset's; the CPU presets "
                        "pin fp32, as their committed results; auto = bf16 where the device has native bf16)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (auto: cuda:$LOCAL_RANK or cuda if available)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: $DKKT_THREADS, else $OMP_NUM_THREADS, else min(cores, physical "
                        "cores))")


def build_parser(command: str) -> argparse.ArgumentParser:
    if command == "status":
        p = argparse.ArgumentParser(prog=f"{PROG} status", description="done / running / failed cells of a grid")
        _grid_options(p)
        p.add_argument("--no-blend", action="store_true", help="leave the blend cells out")
        return p
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
        _executor_options(p)
    return p


def _context(args: argparse.Namespace, command_line: str, check_data: bool = True) -> Context:
    dataset = DATASETS.get(args.dataset.lower())
    if dataset is None:
        raise DkktError(f"unknown dataset {args.dataset!r}; choose fashion_mnist or cifar10")
    base = get_preset(args.preset or DEFAULT_PRESET[dataset])
    if args.eval_archs:
        from dkkt_plugin.models import resolve

        for arch in args.eval_archs:  # an unknown name fails before any cell runs
            resolve(arch, "--eval-archs")
    preset = base.modified(iterations=args.iterations, eval_epochs=args.eval_epochs, num_eval=args.num_eval,
                           split=args.split, precision=args.eval_precision, eval_at=args.eval_at,
                           archs=tuple(args.eval_archs) if args.eval_archs else None)
    root = args.data_root or (os.environ.get(DATA_ENV[dataset]) if dataset == "cifar10" else None)
    out = Path(args.out) if args.out else RESULTS_ROOT / f"{dataset}-{base.name}"
    threads = choose_threads(args.threads)  # --threads, $DKKT_THREADS, $OMP_NUM_THREADS, else the cores
    torch.set_num_threads(threads.threads)
    note = busy_note(threads)
    if note:
        print(note.replace("dkkt:", f"{PROG}:", 1), flush=True)
    ctx = Context(preset, dataset, root, out, device=resolve_device(args.device), command=command_line,
                  transfer_model=args.transfer_model)
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
    print(f"  evaluation on the {spec.split} split: {spec.protocol} protocol, {spec.epochs or 'its own'} epochs, "
          f"{spec.num_eval} run(s), width {spec.width}"
          + (f", also on {', '.join(spec.archs)}" if spec.archs else "")
          + f"; out {ctx.out}; device {ctx.device}, {torch.get_num_threads()} torch thread(s)",
          flush=True)


def _executor_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("executors (submitit: pip install \"dkkt-plugin[cluster]\")")
    g.add_argument("--executor", choices=EXECUTORS, default="process",
                   help="process: cells one after another here (default); local: --workers processes on this "
                        "machine; slurm: one job array, one task per pending cell")
    g.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPU cores)")
    g.add_argument("--time", type=int, default=24 * 60, help="minutes per worker / task before requeue (default 1440)")
    g.add_argument("--partition", default=None, help="slurm partition")
    g.add_argument("--gpus-per-task", type=int, default=None, help="slurm GPUs per task")
    g.add_argument("--array-parallelism", type=int, default=256, help="slurm array tasks running at once")
    g.add_argument("--account", default=None, help="slurm account")
    g.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="extra sbatch option, e.g. --slurm qos=high --slurm mem-per-gpu=40G")


def cmd_grid(args: argparse.Namespace, command_line: str) -> int:
    ctx = _context(args, command_line, check_data=not args.list)
    cells, (index, count) = _cells(args, ctx)
    mine = shard(cells, index, count)
    blends = [] if args.no_blend or args.executor == "slurm" else shard(blend_cells(ctx.preset, cells), index, count)
    if args.list:
        print(f"{ctx.dataset}, {ctx.preset.label}: shard {index}/{count}")
        for cell in [*mine, *blends]:
            print(f"  {cell}")
        return 0
    if args.executor != "process" and count != 1:
        raise ConfigError("--shard is for your own scheduler; --executor local/slurm runs the whole grid")
    if args.executor != "process":
        executors.import_submitit()  # a missing optional dependency is said before any work starts
    states = {c.key: s for c, s, _ in cell_states(ctx.out, [*mine, *blends])}
    _header(ctx, sum(states[c.key] != "done" for c in mine), len(mine), (index, count))
    queue = []
    for i, cell in enumerate([*mine, *blends], 1):
        if states[cell.key] in ("done", "running"):
            what = "finished, skipped" if states[cell.key] == "done" else "running in another process, skipped"
            print(f"[cell {i}/{len(mine) + len(blends)}] {cell}: {what}", flush=True)
        else:
            queue.append(cell)
    needs_edge = any(method_class(ctx.preset.method_overrides(c.column, c.ipc)[0]).needs_edge_model
                     for c in queue if c.column not in ctx.preset.extra_columns and c.column != BLEND_COLUMN)
    run = uuid.uuid4().hex[:12]
    results = shard_file(ctx.out, index, count)
    if args.executor == "slurm" and not args.pretrain_only:
        if not queue:
            print("nothing to submit: every cell is finished or running")
            return 0
        pretrain_first = needs_edge and not args.edge_model and not (ctx.out / "edge_model.pt").exists()
        if needs_edge and not pretrain_first:
            ctx.ensure_edge_model(args.edge_model)
        params = executors.slurm_parameters(
            partition=args.partition, gpus_per_task=args.gpus_per_task, time_min=args.time,
            array_parallelism=args.array_parallelism, account=args.account, threads=args.threads,
            extra=executors.parse_slurm_options(args.slurm))
        executors.submit_slurm(ctx, queue, results, params=params, run=run, threads=args.threads or 1,
                               edge_model=args.edge_model, needs_edge=needs_edge, pretrain_first=pretrain_first)
        return 0
    if needs_edge or args.pretrain_only or args.edge_model:
        ctx.ensure_edge_model(args.edge_model)
    if args.pretrain_only:
        print(f"edge model ready: {ctx.edge_model}")
        return 0
    if not queue:
        failed = 0
    elif args.executor == "local":
        workers = args.workers or os.cpu_count() or 1
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
        failed = executors.run_local(ctx, queue, results, workers=workers, threads=threads, time_min=args.time,
                                     run=run, edge_model=args.edge_model, needs_edge=needs_edge)
    else:
        failed = work(ctx, queue, results, run=run)[1]
    left = [b for b in blends if b.key not in finished_keys(ctx.out)]
    if left:
        print(f"{len(left)} blend cell(s) wait for their dm / dsv_noise runs: run `{PROG} blend` with the same "
              "options once every shard has finished", flush=True)
    print(f"results: {results} ({ctx.preset.label})")
    if count == 1 and not args.no_report:
        from benchmarks import report

        report.main([str(ctx.out)])
    return 1 if failed else 0


def cmd_blend(args: argparse.Namespace, command_line: str) -> int:
    ctx = _context(args, command_line)
    cells, (index, count) = _cells(args, ctx)
    blends = shard(blend_cells(ctx.preset, cells), index, count)
    print(f"dkkt benchmark blend (DSV+DM)/2: {ctx.dataset}, {ctx.preset.label}: {len(blends)} cell(s)", flush=True)
    failed = work(ctx, blends, shard_file(ctx.out, index, count), run=uuid.uuid4().hex[:12], label="blend")[1]
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace, command_line: str) -> int:
    ctx = _context(args, command_line, check_data=False)
    cells, _ = _cells(args, ctx)
    every = [*cells, *([] if args.no_blend else blend_cells(ctx.preset, cells))]
    failed = executors.print_status(ctx.out, every, f"{ctx.dataset}, {ctx.preset.label}, {ctx.out}")
    if ctx.preset.budgets:
        executors.print_runs(ctx.runs_dir, every)
    return failed


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
    command = argv[0] if argv and argv[0] in COMMANDS else "grid"
    if argv and argv[0] == command:
        argv = argv[1:]
    args = build_parser(command).parse_args(argv)
    command_line = f"{PROG} " + " ".join(shlex.quote(a) for a in ([command] if command != "grid" else []) + argv)
    try:
        if command == "merge":
            return cmd_merge(args)
        return {"grid": cmd_grid, "blend": cmd_blend, "status": cmd_status}[command](args, command_line)
    except DkktError as exc:
        print(f"benchmarks.run: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("benchmarks.run: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
