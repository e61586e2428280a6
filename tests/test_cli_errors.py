"""Every bad input of the ``dkkt`` command line and of the Python API.

Each CLI case must end with exit status 2, exactly ONE line on stderr that names the bad input
(and no traceback), and leave every file that existed before byte-identical, with nothing new
created (no half-made run directory, no temporary file). The cases call ``dkkt_plugin.cli.main``
in this process (no interpreter start or torch import per case); a few run as real ``python -m
dkkt_plugin.cli`` processes too, to show that the console command behaves the same.

Also here: the advice printed after a NaN stop, followed literally; a SIGKILL during ``dkkt
pretrain`` and ``dkkt evaluate`` leaves nothing half-written; plugin listing and shadowing.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
import torch

from dkkt_plugin import ConvNet, DKKTLoss, DMLoss, load_edge_model
from dkkt_plugin.cli import main
from dkkt_plugin.data import write_cifar10
from dkkt_plugin.engine import build_config, run_distillation
from dkkt_plugin.errors import CheckpointError, ConfigError
from dkkt_plugin.pretrain import save_edge_model

TINY = ["--ipc", "1", "--pipc", "2", "--iterations", "2", "--net-width", "4", "--net-depth", "1",
        "--device", "cpu"]


# -- the workspace every case reads ---------------------------------------------------------------
BROKEN_DIST = {  # a third-party distribution whose initializer fails at import
    "broken_dkkt_thing-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: broken-dkkt-thing\nVersion: 1.0\n",
    "broken_dkkt_thing-1.0.dist-info/entry_points.txt": textwrap.dedent("""
        [dkkt_plugin.initializers]
        exploding = broken_dkkt_thing_mod:init
        [dkkt_plugin.methods]
        not_a_method = fine_dkkt_thing_mod:init
    """),
    "broken_dkkt_thing_mod.py": "raise RuntimeError('boom at import')\n",
    "fine_dkkt_thing_mod.py": "def init(*a, **k):\n    return 'fine'\n",
}
SHADOW_DIST = {  # a third-party distribution that declares the built-in method name `dm`
    "shadow_dkkt-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: shadow-dkkt\nVersion: 1.0\n",
    "shadow_dkkt-1.0.dist-info/entry_points.txt": "[dkkt_plugin.methods]\ndm = shadow_dkkt_mod:DM\n",
    "shadow_dkkt_mod.py": "from dkkt_plugin.methods.dm import DM\n",
}


def _write_tree(root: Path, files: dict) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _edge(path: Path, channels=1, classes=10, size=28, dataset="fashion_mnist") -> Path:
    save_edge_model(path, ConvNet(channels, classes, size, width=4, depth=1), {"dataset": dataset})
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_fashion_mnist) -> Path:
    """Data, edge models (good and bad), run directories (finished, corrupt, ...) and plugins."""
    import shutil

    ws = tmp_path_factory.mktemp("ws")
    fm = ws / "fmnist"
    shutil.copytree(tiny_fashion_mnist, fm)
    write_cifar10(ws / "cifar", num_train=40, num_test=20, seed=0)
    (ws / "empty").mkdir()
    (ws / "garbage_data").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (ws / "garbage_data" / name).write_bytes(b"this is not an IDX file" * 10)
    (ws / "a_file.txt").write_text("I am a file, not a folder\n")
    _edge(ws / "edge.pt")
    _edge(ws / "edge_rgb.pt", channels=3)  # a 3-channel model declared for fashion_mnist
    _edge(ws / "edge_5cls.pt", classes=5)  # fewer classes than the data
    _edge(ws / "edge_32px.pt", size=32)  # another image size
    _edge(ws / "edge_cifar.pt", channels=3, size=32, dataset="cifar10")  # a model for another dataset
    (ws / "edge_garbage.pt").write_bytes(os.urandom(4096))
    torch.save({"weights": torch.zeros(3)}, ws / "edge_other_format.pt")
    cfg = build_config("dm", dataset="fashion_mnist", data_root=str(fm), ipc=1, pipc=2, iterations=2,
                       net_width=4, net_depth=1)
    run_distillation("dm", cfg, ws / "runs" / "finished", checkpoint_every=1)
    (ws / "runs" / "synonly").mkdir()
    (ws / "runs" / "synonly" / "synthetic.pt").write_bytes((ws / "runs" / "finished" / "synthetic.pt").read_bytes())
    (ws / "runs" / "corrupt").mkdir()
    (ws / "runs" / "corrupt" / "checkpoint.pt").write_bytes(b"\x00garbage, not a checkpoint")
    (ws / "syn_garbage.pt").write_bytes(b"PK\x03\x04 half a zip")
    _write_tree(ws / "broken_plugin", BROKEN_DIST)
    (ws / "demo_done" / "dm").mkdir(parents=True)  # a demo folder holding a run
    (ws / "demo_done" / "dm" / "checkpoint.pt").write_bytes((ws / "runs" / "finished" / "checkpoint.pt").read_bytes())
    return ws


def snapshot(root: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file, and ``relative path/ -> 'dir'`` of every folder."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel + "/" if p.is_dir() else rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_in_process(args: list[str], env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """``dkkt_plugin.cli.main(ARGS)`` in this process, as :func:`run_cli` runs it in another: the
    variables of ``env`` set (``PYTHONPATH`` goes to ``sys.path``), no progress bars, no bytecode
    caches; its exit status (returned, or raised by argparse), stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(sys, "dont_write_bytecode", True)
        mp.setenv("DKKT_PROGRESS", "0")
        for key, value in (env or {}).items():
            if key == "PYTHONPATH":
                mp.syspath_prepend(value)
            else:
                mp.setenv(key, value)
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code
    for module in ("broken_dkkt_thing_mod", "fine_dkkt_thing_mod"):  # a plugin imported from the workspace
        sys.modules.pop(module, None)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def run_cli(args: list[str], env: Optional[dict] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m dkkt_plugin.cli ARGS`` in a fresh interpreter, one torch thread, no progress bars,
    no bytecode caches (a plugin imported from the workspace must not add files to it)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "DKKT_PROGRESS": "0", "PYTHONDONTWRITEBYTECODE": "1",
                **(env or {})}
    return subprocess.run([sys.executable, "-m", "dkkt_plugin.cli", *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout)


# -- the cases ------------------------------------------------------------------------------------
@dataclass
class Case:
    """One bad command line. ``args`` may use ``{ws}`` (the shared workspace) and ``{d}`` (this
    case's own, empty folder); stderr must contain every string of ``expect`` (case-insensitive)."""

    id: str
    args: list[str]
    expect: tuple[str, ...]
    env: dict = field(default_factory=dict)

    def argv(self, ws: Path, d: Path) -> list[str]:
        return [a.format(ws=ws, d=d) for a in self.args]


def D(*args: str, data: str = "--data-root={ws}/fmnist") -> list[str]:
    """A tiny ``dkkt distill`` on the workspace's Fashion-MNIST, writing to ``{d}/out``."""
    return ["distill", "--dataset", "fashion_mnist", data, "--out", "{d}/out", *TINY, *args]


PLUGINS = {"PYTHONPATH": "{ws}/broken_plugin"}
CASES = [
    # -- the 13 cases of issue 11 that failed ---------------------------------------------------
    Case("dataset_is_subset_wrapper", D("--method", "dm", "--dataset", "practical_subset"),
         ("practical_subset", "subset", "--pipc", "--dataset")),
    Case("edge_3_channels_on_fashion_mnist", D("--method", "dm_dkkt", "--edge-model", "{ws}/edge_rgb.pt"),
         ("edge_rgb.pt", "channels 3", "needs 1")),
    Case("edge_fewer_classes_dm_dkkt", D("--method", "dm_dkkt", "--edge-model", "{ws}/edge_5cls.pt"),
         ("edge_5cls.pt", "num_classes 5", "needs 10")),
    Case("edge_fewer_classes_dsv", D("--method", "dsv", "--edge-model", "{ws}/edge_5cls.pt"), ("num_classes 5",)),
    Case("edge_fewer_classes_dm_star", D("--method", "dm_star", "--edge-model", "{ws}/edge_5cls.pt"),
         ("num_classes 5",)),
    *([] if torch.cuda.is_available() else [Case("device_cuda_without_cuda", D("--method", "dm", "--device", "cuda"),
                                                 ("--device cuda", "cuda is not available"))]),
    Case("device_gpu0", D("--method", "dm", "--device", "gpu0"), ("gpu0", "use cpu")),
    Case("out_is_a_file", ["distill", "--method", "dm", "--dataset", "fashion_mnist", "--data-root",
                           "{ws}/fmnist", "--out", "{ws}/a_file.txt", *TINY], ("a_file.txt", "existing file")),
    Case("checkpoint_every_0", D("--method", "dm", "--checkpoint-every", "0"), ("--checkpoint-every", "0")),
    Case("lr_img_negative", D("--method", "dm", "--lr-img", "-1"), ("--lr-img", "-1")),
    Case("pretrain_out_unwritable", ["pretrain", "--dataset", "fashion_mnist", "--data-root", "{ws}/fmnist",
                                     "--width", "4", "--depth", "1", "--out", "{ws}/a_file.txt/edge.pt"],
         ("a_file.txt/edge.pt", "--out")),
    Case("pretrain_out_is_a_folder", ["pretrain", "--dataset", "fashion_mnist", "--data-root", "{ws}/fmnist",
                                      "--width", "4", "--depth", "1", "--out", "{ws}/empty"], ("empty", "folder")),
    Case("synthetic_without_checkpoint", ["distill", "--method", "dm", "--dataset", "fashion_mnist",
                                          "--data-root", "{ws}/fmnist", "--out", "{ws}/runs/synonly", *TINY],
         ("synonly", "no checkpoint")),
    Case("eval_epochs_0", D("--method", "dm", "--num-eval", "1", "--eval-epochs", "0"), ("--eval-epochs", "0")),
    Case("eval_protocol_unknown", D("--method", "dm", "--num-eval", "1", "--eval-protocol", "fancy"),
         ("--eval-protocol", "fancy")),
    Case("num_eval_negative", D("--method", "dm", "--num-eval", "-1"), ("--num-eval", "-1")),
    Case("edge_garbage_bytes", D("--method", "dsv", "--edge-model", "{ws}/edge_garbage.pt"),
         ("edge_garbage.pt", "corrupt")),
    # -- the cases that worked already (kept working) -------------------------------------------
    Case("data_root_empty", D("--method", "dm", data="--data-root={ws}/empty"), ("empty", "--data-root")),
    Case("data_root_missing", D("--method", "dm", data="--data-root={ws}/nowhere"), ("nowhere", "--data-root")),
    Case("data_garbage", D("--method", "dm", data="--data-root={ws}/garbage_data"), ("garbage_data", "idx")),
    Case("cifar_missing", D("--method", "dm", "--dataset", "cifar10", data="--data-root={ws}/empty"),
         ("cifar-10", "--data-root")),
    Case("pipc_too_large", D("--method", "dm", "--pipc", "50"), ("pipc",)),
    Case("pipc_zero", D("--method", "dm", "--pipc", "0"), ("pipc", "0")),
    Case("pipc_text", D("--method", "dm", "--pipc", "lots"), ("pipc", "lots")),
    Case("ipc_zero", D("--method", "dm", "--ipc", "0"), ("ipc",)),
    Case("ipc_not_a_number", D("--method", "dm", "--ipc", "one"), ("ipc", "one")),
    Case("unknown_method", D("--method", "dmx"), ("dmx", "--method")),
    Case("unknown_dataset", D("--method", "dm", "--dataset", "mnist"), ("mnist", "fashion_mnist")),
    Case("unknown_init", D("--method", "dm", "--init", "sparkles"), ("sparkles",)),
    Case("unknown_flag", D("--method", "dm", "--alpha-beta", "1"), ("--alpha-beta",)),
    Case("set_unknown_key", D("--method", "dm", "--set", "nope=1"), ("nope",)),
    Case("set_without_equals", D("--method", "dm", "--set", "nope"), ("--set", "key=value")),
    Case("edge_missing_file", D("--method", "dsv", "--edge-model", "{ws}/nowhere.pt"), ("nowhere.pt", "dkkt pretrain")),
    Case("edge_other_format", D("--method", "dsv", "--edge-model", "{ws}/edge_other_format.pt"),
         ("edge_other_format.pt", "not a dkkt-plugin edge model")),
    Case("edge_other_dataset", D("--method", "dm_dkkt", "--edge-model", "{ws}/edge_cifar.pt"),
         ("edge_cifar.pt", "cifar10")),
    Case("edge_other_image_size", D("--method", "dsv", "--edge-model", "{ws}/edge_32px.pt"), ("image_size 32",)),
    Case("edge_needed", D("--method", "dsv"), ("--edge-model",)),
    Case("checkpoint_without_resume", ["distill", "--method", "dm", "--dataset", "fashion_mnist", "--data-root",
                                       "{ws}/fmnist", "--out", "{ws}/runs/finished", *TINY], ("--resume",)),
    Case("checkpoint_corrupt", ["distill", "--method", "dm", "--dataset", "fashion_mnist", "--data-root",
                                "{ws}/fmnist", "--out", "{ws}/runs/corrupt", "--resume", *TINY],
         ("corrupt", "checkpoint.pt")),
    Case("checkpoint_other_method", ["distill", "--method", "dc", "--dataset", "fashion_mnist", "--data-root",
                                     "{ws}/fmnist", "--out", "{ws}/runs/finished", "--resume", *TINY],
         ("'dm' run", "--method")),
    Case("checkpoint_other_settings", ["distill", "--method", "dm", "--dataset", "fashion_mnist", "--data-root",
                                       "{ws}/fmnist", "--out", "{ws}/runs/finished", "--resume", *TINY,
                                       "--net-width", "8"], ("net_width: 4 -> 8",)),
    Case("resume_without_checkpoint", D("--method", "dm", "--resume"), ("nothing to resume",)),
    Case("plugin_broken", D("--method", "dm", "--init", "exploding"), ("exploding", "broken-dkkt-thing", "boom"),
         env=PLUGINS),
    Case("plugin_not_a_method", D("--method", "not_a_method"), ("not_a_method", "broken-dkkt-thing"), env=PLUGINS),
    Case("evaluate_missing", ["evaluate", "--synthetic", "{ws}/nowhere", "--device", "cpu"], ("nowhere",)),
    Case("evaluate_garbage", ["evaluate", "--synthetic", "{ws}/syn_garbage.pt", "--device", "cpu"],
         ("syn_garbage.pt", "corrupt")),
    Case("evaluate_a_checkpoint", ["evaluate", "--synthetic", "{ws}/runs/finished/checkpoint.pt", "--device", "cpu"],
         ("checkpoint.pt", "not a dkkt-plugin synthetic set")),
    Case("evaluate_num_eval_0", ["evaluate", "--synthetic", "{ws}/runs/finished", "--num-eval", "0"], ("--num-eval",)),
    Case("evaluate_eval_epochs_0", ["evaluate", "--synthetic", "{ws}/runs/finished", "--eval-epochs", "0"],
         ("--eval-epochs",)),
    Case("evaluate_other_dataset", ["evaluate", "--synthetic", "{ws}/runs/finished", "--dataset", "cifar10",
                                    "--data-root", "{ws}/cifar", "--num-eval", "1", "--eval-epochs", "1",
                                    "--device", "cpu"], ("cifar10", "(1, 28, 28)", "(3, 32, 32)")),
    Case("evaluate_json_unwritable", ["evaluate", "--synthetic", "{ws}/runs/finished", "--num-eval", "1",
                                      "--eval-epochs", "1", "--json", "{ws}/a_file.txt/ev.json", "--device", "cpu"],
         ("a_file.txt/ev.json", "--json")),
    Case("pretrain_unknown_dataset", ["pretrain", "--dataset", "mnist", "--out", "{d}/new/edge.pt"], ("mnist",)),
    Case("pretrain_epochs_0", ["pretrain", "--epochs", "0", "--out", "{d}/edge.pt"], ("epochs",)),
    Case("pretrain_data_missing", ["pretrain", "--data-root", "{ws}/nowhere", "--out", "{d}/new/edge.pt"],
         ("nowhere", "--data-root")),
    Case("demo_unknown_method", ["demo", "--methods", "dm,dmx", "--out", "{d}/demo", "--device", "cpu"], ("dmx",)),
    Case("unknown_subcommand", ["distil"], ("distil", "did you mean distill?")),
    # -- flags are whole, thread counts and test subsets are checked, a demo folder is kept --------
    Case("abbreviated_flag", D("--method", "dm", "--iteration", "3"), ("--iteration", "did you mean --iterations?")),
    Case("mistyped_flag", D("--method", "dm", "--iteratons", "3"), ("--iteratons", "did you mean --iterations?")),
    Case("threads_zero", D("--method", "dm", "--threads", "0"), ("--threads", "'0'")),
    Case("threads_variable_garbage", D("--method", "dm"), ("DKKT_THREADS", "abc"), env={"DKKT_THREADS": "abc"}),
    Case("test_size_not_a_multiple", D("--method", "dm", "--num-eval", "1", "--test-size", "25"),
         ("--test-size", "25", "10 classes")),
    Case("evaluate_test_size_too_large", ["evaluate", "--synthetic", "{ws}/runs/finished", "--num-eval", "1",
                                          "--eval-epochs", "1", "--test-size", "60", "--device", "cpu"],
         ("--test-size", "at most 40")),
    Case("demo_into_a_folder_with_a_run", ["demo", "--out", "{ws}/demo_done", "--iterations", "1", "--device", "cpu"],
         ("demo_done", "--resume")),
]


@pytest.fixture(scope="module")
def outcomes(ws) -> dict[str, tuple]:
    """Run every case in this process; ``id -> (case, completed process, before, after)``."""
    dirs = {c.id: ws / "cases" / c.id for c in CASES}
    for d in dirs.values():
        d.mkdir(parents=True)
    before = snapshot(ws)
    done = {c.id: run_in_process(c.argv(ws, dirs[c.id]), env={k: v.format(ws=ws) for k, v in c.env.items()})
            for c in CASES}
    after = snapshot(ws)
    return {c.id: (c, done[c.id], before, after) for c in CASES}


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_changes(outcomes, case_id):
    case, proc, before, after = outcomes[case_id]
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}; stderr:\n{err}"
    assert "Traceback" not in err and "Traceback" not in proc.stdout
    lines = err.splitlines()
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err}"
    for text in case.expect:
        assert text.lower() in err.lower(), f"{text!r} not in: {err}"
    mine = f"cases/{case_id}/"
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)
               and (k.startswith(mine) or not k.startswith("cases/"))}
    assert not changed, f"files created, changed or removed: {sorted(changed)}"


@pytest.mark.parametrize("case_id", ["abbreviated_flag", "edge_fewer_classes_dm_dkkt", "plugin_broken"])
def test_the_console_command_behaves_as_main(ws, tmp_path, case_id):
    """A parse error, an error deep in a run and a broken plugin, through a real process."""
    case = next(c for c in CASES if c.id == case_id)
    env = {k: v.format(ws=ws) for k, v in case.env.items()}
    proc = run_cli(case.argv(ws, tmp_path), env=env)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert all(text.lower() in proc.stderr.lower() for text in case.expect), proc.stderr
    assert list(tmp_path.iterdir()) == []


# -- issue 11, case 11: the advice after a NaN stop works literally ---------------------------------
def test_nan_stop_advice_works_literally_and_the_change_is_recorded(ws, tmp_path):
    import json

    args = D("--method", "dm", "--lr-img", "1e30", "--iterations", "6", "--checkpoint-every", "2")
    args = [a.format(ws=ws, d=tmp_path) for a in args]
    first = run_in_process(args)
    assert first.returncode == 2 and len(first.stderr.splitlines()) == 1, first.stderr
    assert "Traceback" not in first.stderr
    ckpt = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert torch.isfinite(ckpt["method_state"]["images"]).all()
    stopped_at = ckpt["iteration"]
    advice = re.search(r"rerun the same command with `([^`]+)`", first.stderr, re.I)
    assert advice, first.stderr
    second = run_in_process(args + shlex.split(advice.group(1)))
    assert second.returncode == 0, second.stderr
    record = json.loads((tmp_path / "out" / "record.json").read_text())
    [resumed] = record["resumes"]
    assert resumed["iteration"] == stopped_at
    assert resumed["changed"]["lr_img"][0] == 1e30 and resumed["changed"]["lr_img"][1] < 1e30
    assert record["config"]["lr_img"] == resumed["changed"]["lr_img"][1]
    # an unsafe change is still refused, and names the field
    third = run_in_process(args + ["--resume", "--iterations", "8", "--momentum", "0.9"])
    assert third.returncode == 2 and "momentum: 0.5 -> 0.9" in third.stderr, third.stderr


def test_resume_with_a_new_learning_rate_uses_it(ws, tmp_path):
    """The optimiser's learning rate after a resume is the new one, not the checkpoint's."""
    fm = ws / "fmnist"
    base = dict(dataset="fashion_mnist", data_root=str(fm), ipc=1, pipc=2, net_width=4, net_depth=1)
    run_distillation("dm", build_config("dm", iterations=2, **base), tmp_path / "r")
    res = run_distillation("dm", build_config("dm", iterations=4, lr_img=0.25, **base), tmp_path / "r", resume=True)
    assert res.record["resumes"] == [{"iteration": 2, "changed": {"lr_img": [1.0, 0.25], "iterations": [2, 4]},
                                      "date": res.record["resumes"][0]["date"]}]
    # and an unchanged resume stays exact: 2 + 2 iterations == 4 iterations
    run_distillation("dm", build_config("dm", iterations=2, lr_img=0.25, **base), tmp_path / "a")
    a = run_distillation("dm", build_config("dm", iterations=4, lr_img=0.25, **base), tmp_path / "a", resume=True)
    b = run_distillation("dm", build_config("dm", iterations=4, lr_img=0.25, **base), tmp_path / "b")
    assert torch.equal(a.images, b.images) and "resumes" not in b.record


# -- plugins (exit 0: listing is not an error) ------------------------------------------------------
def test_plugins_no_load_says_not_loaded_for_a_broken_plugin(ws):
    proc = run_cli(["plugins", "--no-load"], env={"PYTHONPATH": str(ws / "broken_plugin")})
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if "exploding" in l)
    assert line.endswith("not loaded") and " ok" not in proc.stdout


def test_plugin_shadowing_a_builtin_is_one_warning_line_naming_it(tmp_path):
    _write_tree(tmp_path, SHADOW_DIST)
    proc = run_cli(["plugins", "--group", "methods", "--no-load"], env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    [warning] = proc.stderr.splitlines()
    assert "shadow-dkkt" in warning and "'dm'" in warning and "ignored" in warning
    assert "dkkt_plugin.methods.dm:DM" in proc.stdout and "shadow_dkkt_mod" not in proc.stdout


# -- SIGKILL leaves nothing half-written ------------------------------------------------------------
def _kill_when(proc: subprocess.Popen, marker: str, timeout: float = 120) -> str:
    """Read ``proc``'s stderr until ``marker`` shows (work under way), then SIGKILL it."""
    seen = ""
    deadline = time.time() + timeout
    while marker not in seen and time.time() < deadline:
        chunk = proc.stderr.read1(256) if hasattr(proc.stderr, "read1") else proc.stderr.read(1)
        if not chunk:
            break
        seen += chunk.decode(errors="replace")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker in seen, f"never saw {marker!r}: {seen}"
    return seen


def _popen(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DKKT_PROGRESS": "1",  # progress on stderr: work under way
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen([sys.executable, "-m", "dkkt_plugin.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_sigkill_during_pretrain_leaves_nothing(ws, tmp_path):
    (tmp_path / "old.txt").write_text("keep me\n")
    before = snapshot(tmp_path)
    proc = _popen(["pretrain", "--dataset", "fashion_mnist", "--data-root", str(ws / "fmnist"), "--width", "4",
                   "--depth", "1", "--epochs", "100000", "--batch-size", "8", "--out", str(tmp_path / "edge.pt"),
                   "--device", "cpu"])
    _kill_when(proc, "pretrain fashion_mnist")
    assert snapshot(tmp_path) == before  # no edge.pt, no probe, no temporary file


def test_sigkill_during_evaluate_leaves_nothing(ws, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ws / "runs" / "finished", run)
    (run / "evaluations.jsonl").write_text('{"mean": 0.5}\n')
    before = snapshot(tmp_path)
    proc = _popen(["evaluate", "--synthetic", str(run), "--num-eval", "3", "--eval-epochs", "100000",
                   "--json", str(tmp_path / "ev.json"), "--device", "cpu"])
    _kill_when(proc, "evaluate run 1/3")
    assert snapshot(tmp_path) == before  # the old evaluations intact; no ev.json, no temporary file


# -- the Python API (issue 11, case 12) ---------------------------------------------------------------
@pytest.fixture(scope="module")
def gray_net():
    return ConvNet(1, 10, 28, width=4, depth=1)


@pytest.mark.parametrize("images, labels, expect", [
    (torch.randn(10, 3, 28, 28), torch.arange(10), r"\(10, 3, 28, 28\) \(3 channels.*takes 1 channel"),
    (torch.randn(10, 1, 32, 32), torch.arange(10), r"\(10, 1, 32, 32\).*28x28"),
    (torch.randn(10, 1, 28, 28), torch.arange(10) + 3, r"labels 3\.\.12.*10 classes"),
    (torch.randn(10, 1, 28, 28), torch.arange(10).float(), r"labels must be integers.*torch.float32"),
    (torch.randn(10, 1, 28, 28), torch.arange(9), r"labels.*\(9,\).*\(10, 1, 28, 28\)"),
])
def test_dkkt_loss_bad_inputs_name_the_shapes(gray_net, images, labels, expect):
    dkkt = DKKTLoss(gray_net, num_images=10)
    with pytest.raises(ConfigError, match=expect):
        dkkt(images, labels)


def test_dkkt_loss_needs_a_model():
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module.*None"):
        DKKTLoss(None, num_images=10)


@pytest.mark.parametrize("real, real_labels, syn, syn_labels, expect", [
    (torch.randn(20, 3, 28, 28), torch.arange(20) % 10, torch.randn(10, 3, 28, 28), torch.arange(10),
     r"3 channel.*1 channel"),
    (torch.randn(20, 1, 28, 28), torch.arange(19) % 10, torch.randn(10, 1, 28, 28), torch.arange(10),
     r"real_labels.*\(19,\).*\(20, 1, 28, 28\)"),
    (torch.randn(20, 1, 28, 28), torch.arange(20) % 10, torch.randn(10, 1, 28, 28), torch.arange(12) % 10,
     r"syn_labels.*\(12,\).*\(10, 1, 28, 28\)"),
    (torch.randn(20, 1, 28, 28), (torch.arange(20) % 10).float(), torch.randn(10, 1, 28, 28), torch.arange(10),
     r"labels must be integers"),
])
def test_dm_loss_bad_inputs_name_the_shapes(gray_net, real, real_labels, syn, syn_labels, expect):
    dm = DMLoss(ConvNet(1, 10, 28, width=4, depth=1))
    with pytest.raises(ConfigError, match=expect):
        dm(real, real_labels, syn, syn_labels)


def test_garbage_edge_model_is_one_line(ws):
    with pytest.raises(CheckpointError) as info:
        load_edge_model(ws / "edge_garbage.pt")
    assert "\n" not in str(info.value) and "edge_garbage.pt" in str(info.value)


def test_api_errors_are_the_packages_own(ws, tmp_path):
    from dkkt_plugin import distill

    with pytest.raises(ConfigError, match="lr_img"):
        distill("dm", tmp_path / "a", lr_img=-1.0)
    with pytest.raises(ConfigError, match="checkpoint_every"):
        distill("dm", tmp_path / "b", checkpoint_every=0, dataset="fashion_mnist", data_root=str(ws / "fmnist"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

