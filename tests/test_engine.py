"""The distillation engine: outputs, checkpoints, exact resume (after a real kill), errors."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dkkt_plugin.data import write_cifar10
from dkkt_plugin.engine import build_config, load_synthetic, read_evaluations, run_distillation
from dkkt_plugin.errors import CheckpointError, NonFiniteLossError
from dkkt_plugin.nets import ConvNet
from dkkt_plugin.pretrain import load_edge_model, save_edge_model

TINY = ["--net-width", "4", "--net-depth", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A CIFAR-10 folder in the exact format, 60 training images (6 per class)."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, num_train=60, num_test=30, seed=0)
    edge = root / "edge.pt"
    save_edge_model(edge, ConvNet(3, 10, 32, width=4, depth=1), {"dataset": "cifar10"})
    return root, edge


def cfg(method, cifar, **kw):
    root, edge = cifar
    base = dict(dataset="cifar10", data_root=str(root), ipc=1, pipc=3, iterations=6,
                net_width=4, net_depth=1, edge_model=str(edge))
    if method in ("dc", "dsa", "dc_dkkt", "dsa_dkkt"):
        base.update(outer_loop=1, inner_loop=1)
    return build_config(method, **{**base, **kw})


def test_run_writes_outputs(cifar, tmp_path):
    res = run_distillation("dm_dkkt", cfg("dm_dkkt", cifar), tmp_path / "run", checkpoint_every=2,
                           command="test")
    out = tmp_path / "run"
    for name in ("checkpoint.pt", "synthetic.pt", "synthetic.png", "record.json"):
        assert (out / name).is_file()
    syn = load_synthetic(out)
    assert torch.equal(syn["images"], res.images) and syn["labels"].tolist() == list(range(10))
    assert syn["multipliers"].shape == (10,) and syn["config"]["pipc"] == 3
    rec = json.loads((out / "record.json").read_text())
    assert rec["command"] == "test" and rec["iterations_run"] == 6 and rec["seconds"] > 0
    assert [h["iteration"] for h in rec["history"]] == list(range(6))
    assert {"stationarity", "floor", "lambda_median"} <= set(rec["history"][-1])
    assert (out / "synthetic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if importlib.util.find_spec("matplotlib") is not None:  # the loss curve needs matplotlib
        assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not (out / "loss.png").exists()
    assert rec["config"]["beta"] is None and isinstance(rec["resolved"]["beta"], float)  # asked vs ran
    assert rec["resolved"]["data_root"] == str(cifar[0])


def test_existing_checkpoint_needs_resume_and_is_not_overwritten(cifar, tmp_path):
    c = cfg("dm", cifar)
    run_distillation("dm", c, tmp_path, checkpoint_every=2)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match="--resume"):
        run_distillation("dm", c, tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    with pytest.raises(CheckpointError, match="ipc: 1 -> 2"):
        run_distillation("dm", cfg("dm", cifar, ipc=2), tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="'dm' run, not 'dsv'"):
        run_distillation("dsv", cfg("dsv", cifar), tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run_distillation("dm", c, tmp_path / "elsewhere", resume=True)


def test_corrupt_checkpoint_is_reported_and_kept(cifar, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        run_distillation("dm", cfg("dm", cifar), tmp_path, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"not a checkpoint"


@pytest.mark.parametrize("method", ["dm", "dc_dkkt", "dsa_dkkt"])
def test_resume_extends_a_finished_run_exactly(cifar, tmp_path, method):
    full = run_distillation(method, cfg(method, cifar, iterations=6), tmp_path / "a")
    run_distillation(method, cfg(method, cifar, iterations=3), tmp_path / "b")
    resumed = run_distillation(method, cfg(method, cifar, iterations=6), tmp_path / "b", resume=True)
    assert torch.equal(full.images, resumed.images)
    assert resumed.record["iterations_run"] == 3


def test_non_finite_loss_keeps_last_good_state(cifar, tmp_path):
    with pytest.raises(NonFiniteLossError):
        run_distillation("dm", cfg("dm", cifar, lr_img=1e30, iterations=50), tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert torch.isfinite(state["method_state"]["images"]).all()
    assert 0 <= state["iteration"] < 50  # the state before the update that led to the NaN


def _cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DKKT_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-m", "dkkt_plugin.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_synthetic_set(cifar, tmp_path):
    root, edge = cifar
    args = ["distill", "--method", "dm_dkkt", "--dataset", "cifar10", "--data-root", str(root),
            "--edge-model", str(edge), "--ipc", "1", "--pipc", "3", "--iterations", "400",
            "--checkpoint-every", "5", *TINY]
    ref = _cli([*args, "--out", str(tmp_path / "ref")])
    killed = _cli([*args, "--out", str(tmp_path / "killed")])
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt.exists() and torch.load(ckpt, weights_only=True)["iteration"] >= 10:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    at_kill = torch.load(ckpt, weights_only=True)["iteration"]
    assert 10 <= at_kill < 400, "the run must be killed mid-way"
    assert not (tmp_path / "killed" / "synthetic.pt").exists()
    resumed = _cli([*args, "--out", str(tmp_path / "killed"), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    a, b = load_synthetic(tmp_path / "ref"), load_synthetic(tmp_path / "killed")
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["multipliers"], b["multipliers"])


def test_cli_distill_and_evaluate(cifar, tmp_path, capsys):
    from dkkt_plugin.cli import main

    root, edge = cifar
    out = tmp_path / "run"
    rc = main(["distill", "--method", "dsv", "--dataset", "cifar10", "--data-root", str(root),
               "--edge-model", str(edge), "--ipc", "1", "--pipc", "3", "--iterations", "3",
               "--num-eval", "2", "--eval-epochs", "2", "--dkkt.alpha", "0.5", "--out", str(out), *TINY])
    text = capsys.readouterr().out
    assert rc == 0 and "DKKT: primal" in text and "x its floor" in text and "SCALED to 2 of 1000" in text
    rec = json.loads((out / "record.json").read_text())
    assert rec["config"]["dkkt"]["alpha"] == 0.5 and rec["command"].startswith("dkkt distill --method dsv")
    [ev] = read_evaluations(out)
    assert len(ev["accuracies"]) == 2 and ev["command"] == rec["command"]
    assert main(["evaluate", "--synthetic", str(out), "--num-eval", "1", "--eval-epochs", "1",
                 "--precision", "bf16", "--json", str(tmp_path / "ev.json"), *TINY[-2:]]) == 0
    ev1 = json.loads((tmp_path / "ev.json").read_text())
    assert ev1["num_eval"] == 1 and ev1["protocol"].endswith(", bf16 autocast training")
    assert [len(e["accuracies"]) for e in read_evaluations(out)] == [2, 1]  # appended, not overwritten
    # errors come back as one line and exit status 2
    with pytest.raises(SystemExit) as exit_:
        main(["distill", "--method", "dm", "--dkkt.alpha", "1", "--dataset", "cifar10",
              "--data-root", str(root), "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2 and "unrecognized arguments: --dkkt.alpha 1" in capsys.readouterr().err
    assert main(["distill", "--method", "dm", "--set", "dkkt.alpha=1", "--dataset", "cifar10",
                 "--data-root", str(root), "--out", str(tmp_path / "x")]) == 2
    assert "has no setting 'dkkt.alpha'" in capsys.readouterr().err
    assert main(["distill", "--method", "dm", "--pipc", "7", "--dataset", "cifar10",
                 "--data-root", str(root), "--out", str(tmp_path / "y"), *TINY]) == 2
    assert "pipc" in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("DKKT_EXPECT_EXAMPLE_PLUGIN") != "1",
                    reason="example plugin is installed only in the tox env")
def test_cli_selects_third_party_loss_and_augmentation(cifar, tmp_path, capsys):
    """`--dm-loss` and `--augment.name` pick the example plugin's components for a real DM run and
    its evaluation (whose protocol description names the augmentation)."""
    from dkkt_example_plugin import BrightnessJitter

    from dkkt_plugin.cli import main

    root, _ = cifar
    calls = BrightnessJitter.calls
    out = tmp_path / "plugin-run"
    assert main(["distill", "--method", "dm", "--dataset", "cifar10", "--data-root", str(root), "--ipc", "1",
                 "--pipc", "3", "--iterations", "2", "--dm-loss", "mean_embedding_l1", "--augment.name",
                 "brightness_jitter", "--num-eval", "1", "--eval-epochs", "1", "--out", str(out), *TINY]) == 0
    assert BrightnessJitter.calls >= calls + 2 * 2 + 1  # real and synthetic per iteration, then evaluation
    rec = json.loads((out / "record.json").read_text())
    assert rec["config"]["dm_loss"] == "mean_embedding_l1" and rec["config"]["augment"]["name"] == "brightness_jitter"
    [ev] = read_evaluations(out)
    assert "augmentation 'brightness_jitter'" in ev["protocol"]


def test_edge_model_errors(tmp_path):
    with pytest.raises(CheckpointError, match="dkkt pretrain"):
        load_edge_model(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_edge_model(tmp_path / "bad.pt")


def test_resume_never_goes_backwards_and_at_the_same_iteration_changes_nothing(cifar, tmp_path):
    run_distillation("dm", cfg("dm", cifar, iterations=4), tmp_path, checkpoint_every=2, command="first")
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(CheckpointError, match="at iteration 4, past the 2 iterations asked for: a run never goes"):
        run_distillation("dm", cfg("dm", cifar, iterations=2), tmp_path, resume=True, command="second")
    same = run_distillation("dm", cfg("dm", cifar, iterations=4), tmp_path, resume=True, command="third")
    assert same.record["iterations_run"] == 0 and same.record["command"] == "first"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == files


def test_the_record_separates_this_invocation_from_the_whole_run(cifar, tmp_path):
    run_distillation("dm", cfg("dm", cifar, iterations=2), tmp_path, checkpoint_every=1, command="a")
    rec = run_distillation("dm", cfg("dm", cifar, iterations=5), tmp_path, resume=True, command="b").record
    assert rec["iterations"] == 5 and rec["iterations_run"] == 3
    assert [(i["from"], i["to"], i["command"]) for i in rec["invocations"]] == [(0, 2, "a"), (2, 5, "b")]
    assert rec["seconds"] == pytest.approx(sum(i["seconds"] for i in rec["invocations"]), abs=0.01)
    assert rec["invocation_seconds"] == rec["invocations"][-1]["seconds"] < rec["seconds"]
    assert rec["threads"] == torch.get_num_threads()


def test_outputs_behind_the_checkpoint_are_rewritten_not_returned(cifar, tmp_path):
    """A run extended and interrupted: its synthetic.pt is older than its checkpoint."""
    run_distillation("dm", cfg("dm", cifar, iterations=2), tmp_path, checkpoint_every=1)
    old = load_synthetic(tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    run_distillation("dm", cfg("dm", cifar, iterations=3), tmp_path / "longer", checkpoint_every=1)
    longer = torch.load(tmp_path / "longer" / "checkpoint.pt", weights_only=False)
    torch.save({**longer, "invocations": state.get("invocations", [])}, tmp_path / "checkpoint.pt")
    res = run_distillation("dm", cfg("dm", cifar, iterations=3), tmp_path, resume=True)
    assert old["iteration"] == 2 and load_synthetic(tmp_path)["iteration"] == 3
    assert torch.equal(res.images, load_synthetic(tmp_path / "longer")["images"])


def test_evaluation_lines_carry_the_iteration_of_the_set(cifar, tmp_path):
    from dkkt_plugin.engine import append_evaluation

    run_distillation("dm", cfg("dm", cifar, iterations=3), tmp_path, checkpoint_every=1, snapshot=True)
    append_evaluation(tmp_path, {"mean": 0.5})
    append_evaluation(tmp_path, {"mean": 0.4}, iteration=1)
    assert [(e["iteration"], e["mean"]) for e in read_evaluations(tmp_path)] == [(3, 0.5), (1, 0.4)]
    assert torch.equal(load_synthetic(tmp_path / "snapshots" / "it3.pt")["images"], load_synthetic(tmp_path)["images"])


def test_off_a_terminal_a_run_logs_a_line_every_5_percent(cifar, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DKKT_PROGRESS", raising=False)
    run_distillation("dm", cfg("dm", cifar, iterations=40), tmp_path, checkpoint_every=100)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("distill dm: ")]
    assert len(lines) == 20 and lines[0].startswith("distill dm: 2/40 (5 %)") and "loss " in lines[0]
    assert lines[-1].startswith("distill dm: 40/40 (100 %)")
    monkeypatch.setenv("DKKT_PROGRESS", "0")
    run_distillation("dm", cfg("dm", cifar, iterations=40), tmp_path / "quiet", checkpoint_every=100)
    assert "distill dm:" not in capsys.readouterr().out
