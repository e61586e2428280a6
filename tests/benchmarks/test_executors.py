"""The grid on submitit: local worker processes (killed and rerun), and SLURM up to the sbatch call."""
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import grid
from benchmarks.presets import BLEND_COLUMN
from benchmarks.worker import read_status
from dkkt_plugin.engine import load_synthetic

submitit = pytest.importorskip("submitit", reason="submitit is the optional extra dkkt-plugin[cluster]")
ROOT = Path(__file__).resolve().parents[2]


def _by_column(out):
    return {r["column"]: r for r in grid.read_jsonl(Path(out) / "results.jsonl")}


def _wait_for_running_cell(out, column, timeout=60.0):
    """The pid of the worker running ``column`` once its first checkpoint exists (so: mid-cell)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [e for e in read_status(out) if e["state"] == "running" and e["key"][2] == column]
        if running and list(Path(out).glob(f"runs/*/{column}/*/checkpoint.pt")):
            return running[-1]["pid"]
        time.sleep(0.05)
    raise AssertionError(f"no worker started {column} within {timeout} s")


@pytest.mark.slow
def test_local_workers_killed_mid_cell_then_rerun_match_one_process(cifar_root, tmp_path, run_main):
    grid_args = ["--preset", "smoke", "--dataset", "cifar10", "--data-root", str(cifar_root), "--columns", "dm",
                 "dsv_noise", "--iterations", "300", "--threads", "1", "--no-report"]
    assert run_main([*grid_args, "--out", tmp_path / "one"])[0] == 0
    one = _by_column(tmp_path / "one")

    out = tmp_path / "local"
    command = [sys.executable, "-m", "benchmarks.run", *grid_args, "--out", str(out), "--executor", "local",
               "--workers", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.kill(_wait_for_running_cell(out, "dm"), signal.SIGKILL)  # a real worker process, mid-distillation
    stdout, _ = first.communicate(timeout=120)
    assert first.returncode == 1, stdout
    assert set(_by_column(out)) == {"dsv_noise"}  # the other worker finished its cell; the blend had no dm
    (failed,) = [e for e in read_status(out) if e["state"] == "failed"]
    assert failed["key"][2] == "dm" and "ended before finishing this cell" in failed["reason"]
    rc, status = run_main(["status", *grid_args[:-1], "--out", out])
    assert rc == 1 and "1 done" in status and "1 failed" in status and "1 pending" in status

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "dsv_noise ipc 1 pipc 10 seed 0: finished, skipped" in second.stdout  # only the missing cells ran
    local = _by_column(out)
    assert set(local) == set(one) == {"dm", "dsv_noise", BLEND_COLUMN}
    assert local["dm"]["resumed"] is True
    for column, rec in one.items():
        assert local[column]["accuracies"] == rec["accuracies"], column
        a, b = (load_synthetic(o / rec["run_dir"] / "synthetic.pt") for o in (tmp_path / "one", out))
        assert torch.equal(a["images"], b["images"]), column
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


def _fake_sbatch(monkeypatch, first_id=4241):
    """SlurmExecutor writes its sbatch scripts as on a cluster; `sbatch` is replaced by an echo of
    the job id (first_id, first_id + 1, ...)."""
    ids = iter(range(first_id, first_id + 100))
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # "srun exists"
    monkeypatch.setattr(submitit.SlurmExecutor, "_make_submission_command",
                        lambda self, path: ["echo", f"Submitted batch job {next(ids)}"])


def _scripts(out):
    return [p.read_text() for p in sorted((Path(out) / "submitit").glob("[0-9]*_submission.sh"))]


def test_slurm_submits_one_array_of_pending_cells(cifar_root, tmp_path, monkeypatch, run_main):
    _fake_sbatch(monkeypatch)
    argv = ["--preset", "smoke", "--dataset", "cifar10", "--data-root", cifar_root, "--out", tmp_path,
            "--executor", "slurm", "--partition", "gpu", "--gpus-per-task", "1", "--time", "90",
            "--array-parallelism", "3", "--account", "lab", "--threads", "4", "--slurm", "qos=high"]
    rc, stdout = run_main(argv)
    assert rc == 0, stdout
    assert "submitted pretraining job 4241" in stdout and "submitted job array 4242: 7 task(s)" in stdout
    assert "squeue -j 4242" in stdout and "benchmarks.run status" in stdout
    pretrain, array = _scripts(tmp_path)
    assert "--array" not in pretrain
    for flag in ("--array=0-6%3", "--partition=gpu", "--gpus-per-task=1", "--time=90", "--account=lab",
                 "--qos=high", "--cpus-per-task=4", "--job-name=dkkt-bench", "--dependency=afterok:4241"):
        assert f"#SBATCH {flag}\n" in array, flag
    assert f"export PYTHONPATH={ROOT}" in array and "export OMP_NUM_THREADS=4" in array
    assert "-m submitit.core._submit" in array
    jobs = []
    for path in sorted((tmp_path / "submitit").glob("4242_*_submitted.pkl")):
        with open(path, "rb") as fh:
            jobs.append(pickle.load(fh).function)
    cells = sorted(str(c) for j in jobs for c in j.cells)
    assert len(jobs) == 7 and all(len(j.cells) == 1 and j.threads == 4 for j in jobs)
    assert cells == sorted(str(c) for c in grid.build_cells(jobs[0].ctx.preset, "cifar10"))
    assert sorted(j.worker for j in jobs) == list(range(7)) and len({j.run for j in jobs}) == 1
    requeued = jobs[0].checkpoint()  # pre-emption: submitit resubmits the same worker, which resumes its cell
    assert requeued.function is jobs[0] and requeued.args == ()


def test_slurm_submits_only_what_is_missing(smoke_run, cifar_root, tmp_path, monkeypatch, run_main):
    _, _, done = smoke_run
    out = tmp_path / "grid"
    out.mkdir()
    records = grid.read_jsonl(done / "results.jsonl")
    (out / "results.jsonl").write_text("".join(
        __import__("json").dumps(r) + "\n" for r in records if r["column"] not in ("dc", "dm_dkkt")))
    (out / "edge_model.pt").write_bytes((done / "edge_model.pt").read_bytes())
    _fake_sbatch(monkeypatch, 77)
    rc, stdout = run_main(["--preset", "smoke", "--dataset", "cifar10", "--data-root", cifar_root, "--out", out,
                           "--executor", "slurm"])
    assert rc == 0 and "submitted job array 77: 2 task(s)" in stdout and "pretraining" not in stdout
    (script,) = _scripts(out)
    assert "#SBATCH --array=0-1%2\n" in script and "dependency" not in script


def test_missing_submitit_is_a_one_line_error(cifar_root, tmp_path, monkeypatch, capsys, run_main):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    rc, _ = run_main(["--preset", "smoke", "--dataset", "cifar10", "--data-root", cifar_root, "--out", tmp_path,
                      "--columns", "dm", "--executor", "local", "--workers", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and 'pip install "dkkt-plugin[cluster]"' in err and err.count("\n") == 1


def test_shard_and_executor_exclude_each_other(cifar_root, tmp_path, capsys, run_main):
    rc, _ = run_main(["--preset", "smoke", "--dataset", "cifar10", "--data-root", cifar_root, "--out", tmp_path,
                      "--executor", "local", "--shard", "0/2"])
    assert rc == 2 and "--shard" in capsys.readouterr().err
