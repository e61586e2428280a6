"""The grid's cells, their keys, sharding, and the JSONL results files.

Every result is one JSON line keyed by ``(dataset, preset, column, ipc, pipc, seed)``. A grid run
skips the keys already present in any ``results*.jsonl`` of its output folder, so an interrupted
or extended grid only runs what is missing, and shards (``--shard i/n``) share one folder or
are combined afterwards with ``merge``.

Example:
    >>> cells = [Cell("cifar10", "paper", c, 1, 10, s) for c in ("dm", "dc") for s in (0, 1)]
    >>> [len(shard(cells, i, 3)) for i in range(3)]
    [2, 1, 1]
    >>> cells[0].run_name
    'dm/ipc1-pipc10-seed0'
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator, Optional, Sequence

from dkkt_plugin.errors import ConfigError

from .presets import BLEND_COLUMN, BLEND_SOURCES, Pipc, Preset, pipc_order

RESULTS = "results.jsonl"
FORMAT = "dkkt-bench/1"

Key = tuple  # (dataset, preset, column, ipc, pipc, seed[, budget, protocol])


@dataclass(frozen=True)
class Cell:
    """One column at one (ipc, pipc) for one seed; in a preset with evaluation budgets, also one
    budget (the distillation iteration whose set is evaluated) and one evaluation protocol. The
    cells of every budget of a (column, ipc, pipc, seed) share one run folder: one trajectory."""

    dataset: str
    preset: str
    column: str
    ipc: int
    pipc: Pipc
    seed: int
    budget: Optional[int] = None
    protocol: Optional[str] = None

    @property
    def key(self) -> Key:
        base = (self.dataset, self.preset, self.column, int(self.ipc), str(self.pipc), int(self.seed))
        return base if self.budget is None else (*base, int(self.budget), str(self.protocol))

    @property
    def run_name(self) -> str:
        """Run folder relative to the grid's ``runs/`` folder."""
        return f"{self.column}/ipc{self.ipc}-pipc{self.pipc}-seed{self.seed}"

    def __str__(self) -> str:
        text = f"{self.column} ipc {self.ipc} pipc {self.pipc} seed {self.seed}"
        return text if self.budget is None else f"{text} @ {self.budget} it, {self.protocol} protocol"


def build_cells(preset: Preset, dataset: str, *, ipcs: Optional[Sequence[int]] = None,
                pipcs: Optional[Sequence[Pipc]] = None, columns: Optional[Sequence[str]] = None,
                seeds: Optional[Sequence[int]] = None) -> list[Cell]:
    """The preset's cells, restricted by the given filters, in a fixed order (row, column, seed).

    Raises:
        ConfigError: a filter names an ipc or a column the preset lacks, or selects nothing.
    """
    known = (*preset.columns, *preset.extra_columns)
    unknown = [c for c in columns or () if c not in known]
    if unknown:
        raise ConfigError(f"preset {preset.name!r} has no column(s) {', '.join(unknown)}; its columns: "
                          f"{', '.join(known)}")
    ipcs = list(ipcs) if ipcs else list(preset.default_ipcs)
    for ipc in ipcs:
        preset.pipcs(ipc)  # raises for an ipc without a row
    seeds = list(seeds) if seeds is not None else list(preset.seeds)
    cells = []
    for ipc in sorted(ipcs):
        for pipc in sorted(preset.pipcs(ipc), key=pipc_order):
            if pipcs and pipc not in pipcs:
                continue
            for column in (*preset.columns_for(ipc, pipc), *preset.extra_columns_for(ipc, pipc)):
                if columns and column not in columns:
                    continue
                for s in seeds:
                    if not preset.budgets:
                        cells.append(Cell(dataset, preset.name, column, ipc, pipc, s))
                        continue
                    cells.extend(Cell(dataset, preset.name, column, ipc, pipc, s, b, p)
                                 for b, p in preset.evaluation_points(column, ipc, pipc))
    if preset.order is not None:
        cells.sort(key=preset.order)
    if not cells:
        raise ConfigError(f"the filters select no cell of preset {preset.name!r} (ipc {ipcs}, pipc "
                          f"{list(pipcs or [])}, columns {list(columns or [])}, seeds {seeds})")
    return cells


def blend_cells(preset: Preset, cells: Iterable[Cell]) -> list[Cell]:
    """One blend cell per (ipc, pipc, seed) of ``cells`` that holds both source columns
    (dsv_noise and dm), i.e. only where the row has a DSV column."""
    if not preset.blend or preset.budgets:  # with budgets, blends are cells of their own (build_cells)
        return []
    cells = list(cells)
    have = {(c.ipc, str(c.pipc), c.seed, c.column) for c in cells}
    seen, out = set(), []
    for c in cells:
        k = (c.ipc, str(c.pipc), c.seed)
        if k not in seen and all((*k, s) in have for s in BLEND_SOURCES):
            seen.add(k)
            out.append(Cell(c.dataset, c.preset, BLEND_COLUMN, c.ipc, c.pipc, c.seed))
    return out


def parse_shard(text: str, environ: Optional[dict] = None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``; ``"env"`` reads torchrun's RANK/WORLD_SIZE or SLURM's
    SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT.

    Example:
        >>> parse_shard("1/4"), parse_shard("env", {"RANK": "2", "WORLD_SIZE": "8"})
        ((1, 4), (2, 8))
    """
    env = os.environ if environ is None else environ
    if text == "env":
        for rank, size in (("RANK", "WORLD_SIZE"), ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")):
            if env.get(rank) is not None and env.get(size) is not None:
                text = f"{env[rank]}/{env[size]}"
                break
        else:
            raise ConfigError("--shard env: neither RANK/WORLD_SIZE (torchrun) nor SLURM_ARRAY_TASK_ID/"
                              "SLURM_ARRAY_TASK_COUNT (SLURM array) is set; pass --shard i/n")
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = -1
    if not sep or n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard expects i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return i, n


def shard(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """Shard ``index`` of ``count``: every ``count``-th cell starting at ``index``. Round robin
    over the fixed order spreads each row's cheap and costly columns over all shards."""
    return list(cells[index::count])


def shard_file(out: Path, index: int, count: int) -> Path:
    return out / (RESULTS if count == 1 else f"results.shard-{index}-of-{count}.jsonl")


def record_key(rec: dict) -> Key:
    base = (rec["dataset"], rec["preset"], rec["column"], int(rec["ipc"]), str(rec["pipc"]), int(rec["seed"]))
    return base if rec.get("budget") is None else (*base, int(rec["budget"]), str(rec["protocol"]))


def read_jsonl(path: Path, fmt: str = FORMAT) -> list[dict]:
    """Records of format ``fmt`` in one JSONL file; a line cut short by a crash is skipped with a warning."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                print(f"warning: {path}:{n} is not valid JSON (a write cut short?); skipped", file=sys.stderr)
                continue
            if isinstance(rec, dict) and rec.get("format") == fmt:
                records.append(rec)
    return records


def results_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("results*.jsonl")) if folder.is_dir() else []


def finished_keys(folder: Path) -> set[Key]:
    """Keys recorded in any ``results*.jsonl`` of ``folder``."""
    return {record_key(r) for path in results_files(folder) for r in read_jsonl(path)}


@contextlib.contextmanager
def locked(path: Path) -> Iterator[IO[str]]:
    """``path`` opened for appending under an exclusive ``flock``, flushed to disk before unlocking.

    Processes that append through it (grid workers, SLURM tasks on a shared filesystem) never
    interleave or lose lines; a reader needs no lock (a line is written whole or not at all).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_line(fh: IO[str], record: dict, fmt: str = FORMAT) -> None:
    fh.write(json.dumps({"format": fmt, **record}, default=str) + "\n")


def append_jsonl(path: Path, record: dict, fmt: str = FORMAT) -> None:
    """Append one record as a line, under the file lock and flushed to disk."""
    with locked(path) as fh:
        write_line(fh, record, fmt)


def merge(inputs: Sequence[Path], out: Path) -> tuple[int, int]:
    """Combine JSONL files (folders: their ``results*.jsonl``) into ``out``, one line per key.

    When a key occurs more than once, the latest record (by ``date``) is kept. ``out`` itself, if it
    exists, is read first and rewritten atomically. Returns ``(records read, records written)``.
    """
    files: list[Path] = [out] if out.is_file() else []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            files += [f for f in results_files(p) if f.resolve() != out.resolve()]
        elif p.is_file():
            if p.resolve() != out.resolve():
                files.append(p)
        else:
            raise ConfigError(f"merge: {p} is neither a JSONL file nor a folder")
    best: dict[Key, dict] = {}
    read = 0
    for f in files:
        for rec in read_jsonl(f):
            read += 1
            k = record_key(rec)
            if k not in best or str(rec.get("date", "")) >= str(best[k].get("date", "")):
                best[k] = rec
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in sorted(best.values(), key=lambda r: _sort_key(record_key(r))):
            fh.write(json.dumps(rec, default=str) + "\n")
    os.replace(tmp, out)
    return read, len(best)


def _sort_key(key: Key) -> tuple:
    dataset, preset, column, ipc, pipc, seed, *point = key
    return (dataset, preset, ipc, pipc_order(pipc if pipc == "all" else int(pipc)), column, seed, *point)
