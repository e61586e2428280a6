"""The grid's pending cells as submitit jobs: N local worker processes, or one SLURM job array.

``--executor local --workers N`` starts N worker processes on this machine through submitit's
``LocalExecutor``; they share one queue (``benchmarks.worker``), so a worker that finishes a
cheap cell takes the next one, and this process follows their progress, then builds the report.
``--executor slurm`` submits ONE job array through submitit's ``SlurmExecutor``, one task per
pending cell (blends are evaluated afterwards with ``python -m benchmarks.run blend``), prints the
job id and how to watch it, and returns. A task that SLURM pre-empts or times out is requeued by
submitit calling :meth:`GridJob.checkpoint`; the requeued task resumes its cell from the cell's
own ``checkpoint.pt``.

submitit is an optional dependency: ``pip install "dkkt-plugin[cluster]"``.
"""
from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from dkkt_plugin.errors import ConfigError, DkktError

from .cells import Context
from .grid import Cell, append_jsonl
from .worker import STATUS_FORMAT, cell_states, event, last_events, read_status, status_path, work

ROOT = Path(__file__).resolve().parents[1]  # on the workers' PYTHONPATH, so `benchmarks` imports there
CLUSTER_HINT = 'pip install "dkkt-plugin[cluster]"'
JOB_NAME = "dkkt-bench"


def import_submitit():
    """submitit, or a DkktError saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise DkktError(f"--executor local/slurm needs submitit, which is not installed: {CLUSTER_HINT}") from None
    return submitit


@dataclass
class GridJob:
    """One worker of a run, as submitit pickles and starts it: :func:`benchmarks.worker.work` on ``cells``.

    Args:
        ctx: the grid's context (its loaded datasets are not pickled; the worker loads them again).
        cells: the run's queue (local workers) or the task's one cell (SLURM).
        results: the JSONL file every worker appends to.
        run: the submission's id; worker: this worker's index in it.
        threads: torch CPU threads of the worker process.
        edge_model: ``--edge-model`` (None: the grid's own, pretrained before the worker starts).
        needs_edge: whether a cell of the queue needs the edge model.
    """

    ctx: Context
    cells: list[Cell]
    results: Path
    run: str
    worker: int
    threads: int
    edge_model: Optional[str] = None
    needs_edge: bool = False

    def __call__(self) -> dict[str, int]:
        torch.set_num_threads(self.threads)
        if self.needs_edge:
            self.ctx.ensure_edge_model(self.edge_model)
        done, failed = work(self.ctx, self.cells, self.results, run=self.run, worker=self.worker,
                            label=f"worker {self.worker}")
        return {"done": done, "failed": failed}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's requeue hook (pre-emption, time limit): submit this worker again as it is; its
        claimed cell resumes from its ``checkpoint.pt`` (the last one written)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _pretrain(ctx: Context) -> str:
    """The SLURM job that pretrains the grid's edge model before the array starts."""
    return str(ctx.ensure_edge_model(None))


def setup_lines(threads: int) -> list[str]:
    """Shell lines run before each worker: the repository on PYTHONPATH, the thread count."""
    root = shlex.quote(str(ROOT))
    return [f'export PYTHONPATH={root}"${{PYTHONPATH:+:$PYTHONPATH}}"', f"export OMP_NUM_THREADS={threads}"]


def run_local(ctx: Context, queue: Sequence[Cell], results: Path, *, workers: int, threads: int,
              time_min: int, run: str, edge_model: Optional[str], needs_edge: bool) -> int:
    """Run ``queue`` on ``workers`` local processes and wait for them; returns the failed count.

    A worker that dies (killed, out of memory) leaves its claimed cell ``running``; it is marked
    failed here with the worker's end as the reason, and a rerun of the same command runs it again.
    """
    submitit = import_submitit()
    executor = submitit.LocalExecutor(folder=ctx.out / "submitit")
    executor.update_parameters(timeout_min=time_min, setup=setup_lines(threads))
    jobs = executor.submit_array([GridJob(ctx, list(queue), results, run, i, threads, edge_model, needs_edge)
                                  for i in range(workers)])
    print(f"{workers} local worker(s), {threads} thread(s) each, job ids {', '.join(j.job_id for j in jobs)}; "
          f"logs in {ctx.out / 'submitit'}; status: python -m benchmarks.run status --out {ctx.out} ...", flush=True)
    seen = 0
    while not all(j.done() for j in jobs):
        seen = _follow(ctx.out, run, seen)
        time.sleep(1.0)
    _follow(ctx.out, run, seen)
    ended: dict[int, str] = {}
    for i, job in enumerate(jobs):
        why = _failure(job)
        if why:
            ended[i] = f"worker {i} (job {job.job_id}) ended before finishing this cell: {why}"
            print(f"worker {i} (job {job.job_id}) failed: {why}; log: {job.paths.stderr}", file=sys.stderr, flush=True)
    return _close_run(ctx.out, run, queue, ended)


def _failure(job) -> Optional[str]:
    """Why a finished local job failed (None when it returned): its error, or how its process ended."""
    if job.paths.result_pickle.exists():
        try:
            job.result()
            return None
        except Exception as exc:  # noqa: BLE001 - the worker's own error, recorded as the reason
            lines = [line for line in str(exc).splitlines() if line.strip()]
            return lines[-1].strip() if lines else type(exc).__name__
    lines = [line for line in (job.stderr() or "").splitlines() if line.strip()]
    return f"no result (killed?); last log line: {lines[-1].strip() if lines else '(empty)'}"


def _follow(out: Path, run: str, seen: int) -> int:
    """Print this run's status events after the first ``seen``; returns the new count."""
    events = [e for e in read_status(out) if e.get("run") == run]
    for ev in events[seen:]:
        tail = f": {ev['reason']}" if ev.get("reason") else ""
        print(f"  worker {ev['worker']}: {ev['cell']} {ev['state']}{tail}", flush=True)
    return len(events)


def _close_run(out: Path, run: str, queue: Sequence[Cell], ended: dict[int, str]) -> int:
    """Mark cells a dead worker left ``running`` as failed; returns the run's failed count."""
    mine = last_events([e for e in read_status(out) if e.get("run") == run])
    failed = 0
    for cell in queue:
        ev = mine.get(cell.key)
        if ev and ev["state"] == "running":
            reason = ended.get(ev["worker"], f"worker {ev['worker']} ended before finishing this cell")
            append_jsonl(status_path(out), event(cell, "failed", run, ev["worker"], reason), fmt=STATUS_FORMAT)
            failed += 1
        elif ev and ev["state"] == "failed":
            failed += 1
    return failed


def parse_slurm_options(pairs: Sequence[str]) -> dict[str, str]:
    """``["qos=high", "mem-per-gpu=40G"]`` -> extra sbatch flags (``--qos=high --mem-per-gpu=40G``).

    Example:
        >>> parse_slurm_options(["qos=high", "constraint=a100"])
        {'qos': 'high', 'constraint': 'a100'}
    """
    extra = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--slurm expects KEY=VALUE (an sbatch option without its dashes), got {pair!r}")
        extra[key.strip().lstrip("-")] = value
    return extra


def slurm_parameters(*, partition: Optional[str], gpus_per_task: Optional[int], time_min: int,
                     array_parallelism: int, account: Optional[str], threads: Optional[int],
                     extra: dict[str, str]) -> dict[str, Any]:
    """The parameters given to ``SlurmExecutor.update_parameters``."""
    params: dict[str, Any] = {"job_name": JOB_NAME, "time": time_min, "array_parallelism": array_parallelism,
                              "setup": setup_lines(threads or 1)}
    for name, value in (("partition", partition), ("gpus_per_task", gpus_per_task), ("account", account),
                        ("cpus_per_task", threads)):
        if value is not None:
            params[name] = value
    if extra:
        params["additional_parameters"] = dict(extra)
    return params


def submit_slurm(ctx: Context, cells: Sequence[Cell], results: Path, *, params: dict[str, Any], run: str,
                 threads: int, edge_model: Optional[str], needs_edge: bool, pretrain_first: bool) -> list:
    """Submit one SLURM job array, one task per cell (after a pretraining job when ``pretrain_first``).

    Returns the submitted submitit jobs (the array's tasks, after the pretraining job if any).
    """
    submitit = import_submitit()
    executor = submitit.SlurmExecutor(folder=ctx.out / "submitit")
    executor.update_parameters(**params)
    jobs = []
    if pretrain_first:
        pre = executor.submit(_pretrain, ctx)
        jobs.append(pre)
        print(f"submitted pretraining job {pre.job_id} (the edge model, {ctx.out / 'edge_model.pt'})", flush=True)
        deps = {**params.get("additional_parameters", {}), "dependency": f"afterok:{pre.job_id}"}
        executor.update_parameters(additional_parameters=deps)
    tasks = executor.submit_array([GridJob(ctx, [cell], results, run, i, threads, edge_model, needs_edge)
                                   for i, cell in enumerate(cells)])
    array_id = tasks[0].job_id.split("_")[0]
    print(f"submitted job array {array_id}: {len(tasks)} task(s), one per pending cell, at most "
          f"{min(len(tasks), params['array_parallelism'])} at once; logs {ctx.out / 'submitit'}/{array_id}_<task>_0_log.*",
          flush=True)
    print(f"watch it: squeue -j {array_id}   or   python -m benchmarks.run status --out {ctx.out} (same grid options)")
    print("when it has finished: python -m benchmarks.run blend (same options), then "
          f"python -m benchmarks.report {ctx.out}", flush=True)
    return jobs + tasks


def print_status(out: Path, cells: Sequence[Cell], title: str) -> int:
    """``python -m benchmarks.run status``: one line per cell; returns 1 when a cell failed."""
    rows = cell_states(out, cells)
    counts: dict[str, int] = {}
    for _, state, _ in rows:
        counts[state] = counts.get(state, 0) + 1
    order = ("done", "running", "failed", "interrupted", "pending")
    print(f"{title}: {len(rows)} cell(s): " + ", ".join(f"{counts[s]} {s}" for s in order if s in counts))
    for cell, state, ev in rows:
        where = f" (worker {ev['worker']}, pid {ev['pid']} on {ev['host']}" + (f", job {ev['job']}" if ev.get("job") else "") \
            + f", {ev['date']})" if ev and state != "done" else ""
        reason = f": {ev.get('reason', '')}" if state == "failed" else ""
        print(f"  {state:<11} {cell}{where}{reason}")
    return 1 if counts.get("failed") else 0


def print_runs(runs_dir: Path, cells: Sequence[Cell]) -> None:
    """How far each run of a grid with budgets is: its checkpoint's iteration against the largest
    budget it is asked for, and the budgets whose set is kept."""
    from dkkt_plugin.engine import SNAPSHOTS, checkpoint_iteration

    target: dict[str, int] = {}
    for cell in cells:
        if cell.budget:
            target[cell.run_name] = max(target.get(cell.run_name, 0), cell.budget)
    print(f"runs ({len(target)}):")
    for name, goal in target.items():
        run = Path(runs_dir) / name
        try:
            at = checkpoint_iteration(run)
        except DkktError as exc:
            print(f"  {name}: unreadable checkpoint ({' '.join(str(exc).split())})")
            continue
        kept = sorted(int(p.stem[2:]) for p in (run / SNAPSHOTS).glob("it*.pt")) if (run / SNAPSHOTS).is_dir() else []
        if at is not None:
            state = f"iteration {at} of {goal} ({100 * at / goal:.0f} %)"
        else:  # a blend has no distillation of its own: its sets are made from its sources'
            state = "no checkpoint of its own" if kept else "not started"
        print(f"  {name}: {state}; sets kept at {', '.join(map(str, kept)) or 'none yet'}")
