"""Working through a queue of grid cells, with a status log that several processes share.

One function, :func:`work`, runs cells for every way of running the grid: in the calling process
(``python -m benchmarks.run``), as one of N local worker processes, or as one task of a SLURM
array (``benchmarks.executors``). Workers of one run share a queue: each claims the next cell
nobody else of the run has claimed, by appending a ``running`` event to ``status.jsonl`` under an
exclusive file lock, so two workers never take the same cell. Every cell ends with a ``done``
event (its result line is in ``results*.jsonl``) or a ``failed`` event with the reason's last
line; a failure never stops the other cells.

``status.jsonl`` (one JSON object per line, format ``dkkt-bench-status/1``): ``key`` (the cell's
result key), ``cell`` (readable), ``state`` (``running`` | ``done`` | ``failed``), ``reason``
(failed only), ``run`` (id of one submission), ``worker`` (its index in the run), ``pid``,
``host``, ``job`` (SLURM / submitit job id, when there is one), ``date``. A cell's state is its
last event; a ``running`` event whose process is gone (same host) is shown as ``interrupted``.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from dkkt_plugin.errors import CheckpointError, DkktError

from .cells import Context, blend_sources, run_blend, run_cell
from .grid import Cell, append_jsonl, finished_keys, locked, read_jsonl, write_line
from .presets import BLEND_COLUMN, BLEND_SOURCES

STATUS = "status.jsonl"
STATUS_FORMAT = "dkkt-bench-status/1"
POLL_SECONDS = 1.0


def status_path(out: Path) -> Path:
    return Path(out) / STATUS


def read_status(out: Path) -> list[dict]:
    path = status_path(out)
    return read_jsonl(path, STATUS_FORMAT) if path.is_file() else []


def _job_id() -> Optional[str]:
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")


def event(cell: Cell, state: str, run: str, worker: int, reason: Optional[str] = None, **extra: Any) -> dict:
    """One status line for ``cell`` (``pid`` / ``host`` / ``job`` of the calling process)."""
    rec = {"key": list(cell.key), "cell": str(cell), "run_name": cell.run_name, "state": state, "run": run,
           "worker": worker,
           "pid": os.getpid(), "host": socket.gethostname(), "job": _job_id(),
           "date": datetime.datetime.now().isoformat(timespec="seconds")}
    if reason is not None:
        rec["reason"] = reason
    return {**rec, **extra}


def alive(ev: dict) -> bool:
    """Whether the process of a ``running`` event may still run it (unknown on another host: yes;
    the calling process itself: no, it is asking because it is not running that cell now)."""
    if ev.get("host") != socket.gethostname():
        return True
    if ev.get("pid") == os.getpid():
        return False
    try:
        os.kill(int(ev["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


def last_events(events: Sequence[dict]) -> dict[tuple, dict]:
    """The last status event of every cell key."""
    last: dict[tuple, dict] = {}
    for ev in events:
        last[tuple(ev["key"])] = ev
    return last


def cell_states(out: Path, cells: Sequence[Cell]) -> list[tuple[Cell, str, dict]]:
    """``(cell, state, last event)`` with state done / failed / running / interrupted / pending.

    A cell is done when its result line exists, whatever its events say."""
    done, last = finished_keys(out), last_events(read_status(out))
    rows = []
    for cell in cells:
        ev = last.get(cell.key, {})
        if cell.key in done:
            state = "done"
        elif ev.get("state") == "failed":
            state = "failed"
        elif ev.get("state") == "running":
            state = "running" if alive(ev) else "interrupted"
        else:
            state = "pending"
        rows.append((cell, state, ev))
    return rows


def reason_of(exc: BaseException) -> str:
    """The failure's last line: ``TypeName: last line of the message``."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1].strip() if lines else '(no message)'}"


class _Queue:
    """The run's view of ``status.jsonl``: claims and terminal events, under the file lock."""

    def __init__(self, ctx: Context, run: str, worker: int, cells: Sequence[Cell]):
        self.ctx, self.out, self.run, self.worker, self.cells = ctx, Path(ctx.out), run, worker, list(cells)

    def _mine(self) -> dict[tuple, dict]:
        return last_events([e for e in read_status(self.out) if e.get("run") == self.run])

    def claim(self, ready: Callable[[Cell], Optional[bool]]) -> tuple[Optional[Cell], bool]:
        """Claim the first cell not claimed by another worker of this run and ready to run.

        ``ready(cell)`` is True (run it), None (not yet: its inputs are still being made) or False
        (never in this run). Returns ``(cell or None, whether to wait and ask again)``.
        """
        with locked(status_path(self.out)) as fh:
            mine, done = self._mine(), finished_keys(self.out)
            wait = False
            for cell in self.cells:
                ev = mine.get(cell.key)
                if cell.key in done or (ev and (ev["state"] != "running" or ev["worker"] != self.worker)):
                    continue  # finished, ended in this run, or another worker's
                ok = ready(cell)
                if ok:  # (a cell of my own again after a requeue: claimed anew, from this process)
                    write_line(fh, event(cell, "running", self.run, self.worker), STATUS_FORMAT)
                    return cell, False
                wait = wait or ok is None
            return None, wait

    def end(self, cell: Cell, state: str, reason: Optional[str] = None) -> None:
        append_jsonl(status_path(self.out), event(cell, state, self.run, self.worker, reason), fmt=STATUS_FORMAT)

    def run_busy(self, cell: Cell, mine: dict[tuple, dict]) -> bool:
        """Whether a live worker of this run holds another cell of ``cell``'s run folder (the
        budgets of one trajectory run one after another, never side by side)."""
        return any(ev["state"] == "running" and alive(ev) and tuple(ev["key"]) != cell.key
                   and ev.get("run_name") == cell.run_name for ev in mine.values())

    def ready(self, cell: Cell) -> Optional[bool]:
        """True: run it now; None: not yet (its run folder or its inputs are being worked on);
        False: never in this run."""
        mine = self._mine()
        if cell.column == BLEND_COLUMN:
            return self.blend_ready(cell, mine)
        return None if cell.budget is not None and self.run_busy(cell, mine) else True

    def blend_ready(self, cell: Cell, mine: Optional[dict[tuple, dict]] = None) -> Optional[bool]:
        """A blend runs once both source sets exist; it waits while a live worker of this run makes
        one, or (with budgets) while a source's cell at this budget or later is still to run."""
        try:
            blend_sources(self.ctx, cell)
            return True
        except CheckpointError:
            pass
        mine = self._mine() if mine is None else mine
        for source in BLEND_SOURCES:
            ev = mine.get(dataclasses.replace(cell, column=source).key)
            if ev and ev["state"] == "running" and alive(ev):
                return None
            if cell.budget is not None:
                sources = [c for c in self.cells if c.column == source and c.run_name.split("/")[1:] ==
                           cell.run_name.split("/")[1:] and c.budget >= cell.budget]
                if any(c.key not in finished_keys(self.out) and mine.get(c.key, {}).get("state") != "failed"
                       for c in sources):
                    return None
        return False


def work(ctx: Context, cells: Sequence[Cell], results: Path, *, run: str, worker: int = 0,
         label: str = "cell") -> tuple[int, int]:
    """Run the cells of ``cells`` that no other worker of ``run`` claims; returns ``(done, failed)``.

    Blend cells wait for their dm / dsv_noise sets while another worker of the run still makes
    them, and are left for later (``python -m benchmarks.run blend``) when nobody will.
    """
    queue = _Queue(ctx, run, worker, cells)
    ran = failed = 0
    while True:
        cell, wait = queue.claim(queue.ready)
        if cell is None:
            if not wait:
                return ran, failed
            time.sleep(POLL_SECONDS)
            continue
        head = f"[{label} {cells.index(cell) + 1}/{len(cells)}] {cell}"
        try:
            rec = (run_blend if cell.column == BLEND_COLUMN else run_cell)(ctx, cell)
        except Exception as exc:  # this cell fails (NaN, bad data, a bug); the others go on
            failed += 1
            queue.end(cell, "failed", reason_of(exc))
            if not isinstance(exc, DkktError):
                traceback.print_exc()
            print(f"{head}: FAILED: {reason_of(exc)}", file=sys.stderr, flush=True)
            continue
        append_jsonl(results, rec)
        queue.end(cell, "done")
        ran += 1
        distill = (f"distill {rec['distill_seconds']:.1f} s, " if rec.get("distill_seconds") is not None else "")
        rate = rec.get("seconds_per_iteration")
        print(f"{head}: {100 * rec['mean']:.2f} % ({distill}"
              + (f"{rate:.3f} s/it; " if rate else "") + f"eval {rec['eval_seconds']:.1f} s) "
              f"[{ctx.preset.tag}]", flush=True)
