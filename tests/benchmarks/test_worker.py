"""The shared queue and status log: locked appends, failures recorded per cell, reruns of what failed."""
import json
import multiprocessing

from benchmarks import grid
from benchmarks.worker import read_status, reason_of
from dkkt_plugin.errors import NonFiniteLossError


def _append_many(path, tag, n):
    for i in range(n):
        grid.append_jsonl(path, {"tag": tag, "i": i, "pad": "x" * 5000})  # lines longer than a pipe buffer


def test_concurrent_appends_neither_interleave_nor_lose_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, t, 200)) for t in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 600
    recs = [json.loads(line) for line in lines]  # every line parses: none interleaved
    assert sorted((r["tag"], r["i"]) for r in recs) == sorted((t, i) for t in "abc" for i in range(200))


def test_reason_is_the_last_line():
    assert reason_of(NonFiniteLossError("step 3:\nloss is nan")) == "NonFiniteLossError: loss is nan"
    assert reason_of(RuntimeError()) == "RuntimeError: (no message)"


def test_a_failed_cell_is_recorded_the_others_go_on_and_a_rerun_runs_only_it(cifar_root, tmp_path,
                                                                             monkeypatch, run_main, capsys):
    from dkkt_plugin.methods.dm import DM

    def nan_step(self, iteration):
        raise NonFiniteLossError(f"DM loss is nan at iteration {iteration}")

    argv = ["--preset", "smoke", "--dataset", "cifar10", "--data-root", cifar_root, "--out", tmp_path,
            "--columns", "dm", "dc", "dsv_noise", "--no-report"]
    step = DM.step
    monkeypatch.setattr(DM, "step", nan_step)
    rc, stdout = run_main(argv)
    assert rc == 1
    assert "FAILED: NonFiniteLossError: DM loss is nan at iteration 0" in capsys.readouterr().err
    assert sorted(r["column"] for r in grid.read_jsonl(tmp_path / "results.jsonl")) == ["dc", "dsv_noise"]
    rc, status = run_main(["status", *argv[:-1]])
    assert rc == 1 and "2 done, 1 failed, 1 pending" in status  # pending: the blend, which needs dm
    (line,) = [s for s in status.splitlines() if s.strip().startswith("failed")]
    assert "dm ipc 1 pipc 10 seed 0" in line and "NonFiniteLossError: DM loss is nan at iteration 0" in line
    monkeypatch.setattr(DM, "step", step)
    rc, stdout = run_main(argv)
    assert rc == 0 and stdout.count("finished, skipped") == 2
    assert sorted(r["column"] for r in grid.read_jsonl(tmp_path / "results.jsonl")) == [
        "blend_dsv_dm", "dc", "dm", "dsv_noise"]
    assert [e["state"] for e in read_status(tmp_path) if e["key"][2] == "dm"] == ["running", "failed", "running", "done"]
