"""The ``dkkt`` command line (``plugins`` here; the engine's subcommands in test_distill etc.)."""
import os
import re

import pytest

from dkkt_plugin import cli, registry

EXAMPLE_PLUGIN = os.environ.get("DKKT_EXPECT_EXAMPLE_PLUGIN") == "1"


def test_plugins_lists_every_discovered_component(capsys):
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    total = 0
    for group in registry.GROUPS:
        found = registry.discover(group)
        assert f"dkkt_plugin.{group} ({len(found)})" in out
        for name, comp in found.items():
            assert f"  {name} " in out and f"[{comp.distribution}] ok" in out
        total += sum(c.distribution == "dkkt-plugin" for c in found.values())
    assert out.count("[dkkt-plugin] ok") == total > 0
    if EXAMPLE_PLUGIN:
        assert "constant" in out and "[dkkt-example-plugin] ok" in out


def test_plugins_reports_broken_plugin_and_lists_the_rest(fake_distribution, capsys):
    assert cli.main(["plugins"]) == 1
    captured = capsys.readouterr()
    assert "exploding" in captured.out and "BROKEN: RuntimeError: boom at import" in captured.out
    assert "fine_dkkt_thing_mod:init" in captured.out and "DKKTLoss" in captured.out
    assert "not a method component" in captured.out  # not_a_method fails its group's protocol
    assert "2 plugin(s) failed" in captured.err


def test_plugins_no_load_says_not_loaded(fake_distribution, capsys):
    assert cli.main(["plugins", "--no-load"]) == 0
    out = capsys.readouterr().out
    assert "exploding" in out and " ok" not in out and out.count("not loaded") >= 16


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage: dkkt" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0


@pytest.mark.parametrize("flags, env, expected", [
    ([], {}, ("auto", "cpu")),
    (["--precision", "fp32", "--backend", "torch"], {}, ("fp32", "torch")),
    ([], {"DKKT_PRECISION": "bf16", "DKKT_BACKEND": "compile"}, ("bf16", "compile")),
    (["--backend", "cpu"], {"DKKT_BACKEND": "torch"}, ("auto", "cpu")),  # the flag wins over the environment
])
def test_speed_flags_set_the_process_settings_for_the_command(monkeypatch, tmp_path, flags, env, expected):
    from dkkt_plugin import evaluation, runtime

    for name in (runtime.PRECISION_ENV, runtime.BACKEND_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen = []

    def fake_evaluate(synthetic, **kwargs):
        seen.append((runtime.settings().precision, runtime.settings().backend))
        assert not {"precision", "compile_step", "fused"} & set(kwargs)  # no speed keyword reaches evaluate
        return evaluation.EvalResult("fake protocol", [0.5], [0])

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    assert cli.main(["evaluate", "--synthetic", str(tmp_path / "synthetic.pt"), "--dataset", "fashion_mnist",
                     *flags]) == 0
    assert seen == [expected]
    assert runtime.settings().precision == env.get("DKKT_PRECISION", "auto")  # restored after the command


def test_speed_flags_reject_other_words_and_name_the_ones_they_replace(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", "--synthetic", "x.pt", "--precision", "fp16"])
    assert exit_.value.code == 2 and "--precision: invalid choice: 'fp16'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", "--synthetic", "x.pt", "--eval-fused", "false"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "use --backend torch (or cpu) instead of --eval-fused" in err and "did you mean" not in err
    monkeypatch.setenv("DKKT_PRECISION", "fp16")
    assert cli.main(["evaluate", "--synthetic", "x.pt", "--dataset", "fashion_mnist"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "$DKKT_PRECISION='fp16' is not a precision" in err


@pytest.mark.parametrize("method", ["dm_dkkt", "dsv", "dm", "dc"])
def test_distill_help_shows_two_speed_flags(method, capsys):
    with pytest.raises(SystemExit):
        cli.main(["distill", "--method", method, "--help"])
    text = capsys.readouterr().out
    flags = set(re.findall(r"(?<![\w-])--[\w.-]+", text))
    speed = {f for f in flags if re.search(r"precision|fused|compile|backend", f)}
    assert speed == {"--precision", "--backend"}


# -- a fast first hour: --help without torch, whole flags, did-you-mean ------------------------------
HELPS = [["--help"], ["distill", "--help"], ["distill", "--method", "dc", "--help"], ["evaluate", "--help"],
         ["pretrain", "--help"], ["demo", "--help"], ["plugins", "--help"], ["--version"]]


def test_help_and_import_load_no_torch():
    """Every --help (and `import dkkt_plugin`) answers from a fresh interpreter without importing torch."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import contextlib, io, sys
        import dkkt_plugin
        assert "torch" not in sys.modules, "import dkkt_plugin loaded torch"
        from dkkt_plugin.cli import main
        for argv in {HELPS!r}:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    main(argv)
                except SystemExit as exit_:
                    assert exit_.code == 0, (argv, exit_.code)
            assert "usage: dkkt" in out.getvalue() or "dkkt-plugin" in out.getvalue(), argv
        print("torch" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def _run(argv, capsys):
    """``main(argv)``'s exit status (returned or raised by argparse), stdout and stderr."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, hint", [
    (["distill", "--out", "{tmp}/run", "--iteration", "3", "--device", "nope"], "did you mean --iterations?"),
    (["distill", "--out", "{tmp}/run", "--iteratons", "3", "--device", "nope"], "did you mean --iterations?"),
    (["distill", "--out", "{tmp}/run", "--meth", "dm", "--device", "nope"], "did you mean --method?"),
    (["evaluate", "--synthetic", "{tmp}/s.pt", "--num-eva", "1", "--device", "nope"], "did you mean --num-eval?"),
    (["pretrain", "--out", "{tmp}/edge.pt", "--epoch", "1", "--device", "nope"], "did you mean --epochs?"),
    (["demo", "--out", "{tmp}/demo", "--iteration", "1", "--device", "nope"], "did you mean --iterations?"),
    (["distil", "--out", "{tmp}/run"], "did you mean distill?"),
    (["distill", "--method", "dm", "--out", "{tmp}/run", "--dkkt.alpha", "0.1", "--device", "nope"],
     "--dkkt.alpha is a setting of --method dc_dkkt or dm_dkkt or dsa_dkkt or dsv"),
])
def test_flags_are_never_abbreviated_and_a_typo_gets_did_you_mean(argv, hint, tmp_path, capsys):
    code, out, err = _run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert hint in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_eval_protocol_choices_are_the_protocols():
    import typing

    from dkkt_plugin.evaluation import PROTOCOLS
    from dkkt_plugin.settings import EVAL_PROTOCOLS, EvalConfig

    assert EVAL_PROTOCOLS == tuple(sorted(PROTOCOLS))
    assert typing.get_args(typing.get_type_hints(EvalConfig)["eval_protocol"]) == EVAL_PROTOCOLS


def test_distill_help_lists_the_essentials_first(capsys):
    code, out, _ = _run(["distill", "--help"], capsys)
    assert code == 0
    order = ["--dataset", "--ipc", "--pipc", "--method", "--edge-model", "--iterations", "--out", "--num-eval",
             "--eval-epochs", "--test-size", "--device", "--threads", "--lr-img", "--dkkt.distance", "--set"]
    body = out.split("\noptions:", 1)[1]  # after the usage lines
    positions = [body.index(f"  {flag} ") for flag in order]
    assert positions == sorted(positions), dict(zip(order, positions))
    assert "advanced: dm_dkkt settings" in body and "fmnist" in body
    assert body.index("advanced:") > body.index("--num-eval")


# -- threads --------------------------------------------------------------------------------------
@pytest.fixture
def fake_evaluate(monkeypatch):
    """``evaluation.evaluate`` replaced by one that records its arguments and torch's thread count."""
    import torch

    from dkkt_plugin import evaluation

    seen = []

    def fake(synthetic, **kwargs):
        seen.append({**kwargs, "threads": torch.get_num_threads()})
        return evaluation.EvalResult("fake protocol", [0.5], [0], test_size=kwargs.get("test_size"))

    monkeypatch.setattr(evaluation, "evaluate", fake)
    return seen


def test_threads_flag_and_variables_reach_torch_and_the_record(fake_evaluate, monkeypatch, tmp_path, capsys):
    import json

    import torch

    from dkkt_plugin.provenance import available_cores, physical_cores

    monkeypatch.delenv("DKKT_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    base = ["evaluate", "--synthetic", str(tmp_path / "s.pt"), "--dataset", "fashion_mnist", "--device", "cpu"]
    assert cli.main([*base, "--threads", "3", "--json", str(tmp_path / "ev.json")]) == 0
    record = json.loads((tmp_path / "ev.json").read_text())
    assert record["machine"]["torch_threads"] == 3 and record["machine"]["threads_source"] == "--threads"
    assert cli.main(base) == 0  # default: min(cores, physical cores)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli.main(base) == 0
    monkeypatch.setenv("DKKT_THREADS", "2")
    assert cli.main(base) == 0  # DKKT_THREADS before OMP_NUM_THREADS
    assert cli.main([*base, "--threads", "1"]) == 0  # the flag before both
    assert [s["threads"] for s in fake_evaluate] == [3, min(available_cores(), physical_cores()), 1, 2, 1]
    assert torch.get_num_threads() == before  # restored after each command


@pytest.mark.parametrize("argv_tail, env, expect", [
    (["--threads", "0"], {}, "argument --threads: must be a positive integer, got '0'"),
    (["--threads", "two"], {}, "argument --threads: must be a positive integer, got 'two'"),
    ([], {"DKKT_THREADS": "abc"}, "DKKT_THREADS='abc' is not a positive number of threads"),
])
def test_bad_thread_counts_are_one_line(fake_evaluate, monkeypatch, tmp_path, capsys, argv_tail, env, expect):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, out, err = _run(["evaluate", "--synthetic", str(tmp_path / "s.pt"), "--dataset", "fashion_mnist",
                           *argv_tail], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and expect in err, err
    assert fake_evaluate == []


def test_a_busy_machine_gets_one_line_saying_what_runs(fake_evaluate, monkeypatch, tmp_path, capsys):
    import os as os_module

    from dkkt_plugin.provenance import available_cores

    monkeypatch.setattr(os_module, "getloadavg", lambda: (available_cores() + 0.5, 0.0, 0.0))
    code, out, err = _run(["evaluate", "--synthetic", str(tmp_path / "s.pt"), "--dataset", "fashion_mnist",
                           "--threads", "2"], capsys)
    assert code == 0 and err == ""
    note = out.splitlines()[0]
    assert "machine is busy" in note and "this run uses 2 threads (--threads)" in note and "--threads 1" in note
    monkeypatch.setattr(os_module, "getloadavg", lambda: (0.0, 0.0, 0.0))
    code, out, _ = _run(["evaluate", "--synthetic", str(tmp_path / "s.pt"), "--dataset", "fashion_mnist"], capsys)
    assert code == 0 and "machine is busy" not in out


# -- --test-size, --edge-model NAME, the summary --------------------------------------------------
def test_evaluate_passes_test_size_and_seed(fake_evaluate, tmp_path, capsys):
    base = ["evaluate", "--synthetic", str(tmp_path / "s.pt"), "--dataset", "fashion_mnist"]
    assert cli.main(base) == 0 and cli.main([*base, "--test-size", "1000", "--test-seed", "7"]) == 0
    assert [(s["test_size"], s["test_seed"]) for s in fake_evaluate] == [(None, 0), (1000, 7)]


def test_evaluation_flags_are_generated_from_eval_config(fake_evaluate, tmp_path, capsys):
    """Every EvalConfig setting is a flag of distill and evaluate, with the command's own default
    (evaluate: 5 runs; distill: none); the values given reach evaluate()."""
    from dkkt_plugin.config import config_fields
    from dkkt_plugin.settings import EvalConfig

    subs = cli.build_parser(["distill"])._subparsers._group_actions[0].choices
    for command, runs in (("distill", 0), ("evaluate", 5)):
        text = " ".join(subs[command].format_help().split())
        for spec in config_fields(EvalConfig):
            assert f"{spec.flag} " in text and spec.help in text, (command, spec.flag)
        assert f"no evaluation) (default: {runs})" in text, command
    base = ["evaluate", "--synthetic", str(tmp_path / "s.pt"), "--dataset", "fashion_mnist"]
    assert cli.main(base) == 0
    assert cli.main([*base, "--num-eval", "2", "--eval-seed", "3", "--eval-epochs", "4"]) == 0
    assert [(s["num_eval"], s["seed"]) for s in fake_evaluate] == [(5, 0), (2, 3)]
    assert "SCALED to 4 of 1000 epochs" in fake_evaluate[1]["protocol"].describe()


TINY = ["--dataset", "fashion_mnist", "--ipc", "1", "--pipc", "2", "--iterations", "1", "--net-width", "4",
        "--net-depth", "1", "--device", "cpu", "--threads", "1"]


def test_distill_evaluates_on_a_stratified_subset_and_records_it(tiny_fashion_mnist, tmp_path, capsys):
    from dkkt_plugin.engine import read_evaluations

    out = tmp_path / "run"
    code, text, err = _run(["distill", "--method", "dm", "--data-root", str(tiny_fashion_mnist), *TINY,
                            "--out", str(out), "--num-eval", "1", "--eval-epochs", "1", "--test-size", "20",
                            "--test-seed", "3"], capsys)
    assert code == 0, err
    [ev] = read_evaluations(out)
    assert (ev["test_size"], ev["test_total"], ev["test_seed"]) == (20, 40, 3)
    assert "tested on a stratified 20 of 40 test images (seed 3)" in text


@pytest.mark.parametrize("tail, expect", [
    (["--num-eval", "1", "--test-size", "25"], "must be a positive multiple of the 10 classes"),
    (["--num-eval", "1", "--test-size", "60"], "the smallest class has 4: use at most 40"),
    (["--test-size", "20"], "add --num-eval N"),
])
def test_distill_checks_test_size_before_distilling(tiny_fashion_mnist, tmp_path, capsys, tail, expect):
    code, _, err = _run(["distill", "--method", "dm", "--data-root", str(tiny_fashion_mnist), *TINY,
                         "--out", str(tmp_path / "run"), *tail], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and expect in err, err
    assert not (tmp_path / "run").exists()


def test_edge_model_name_reaches_the_packaged_model(tiny_fashion_mnist, tmp_path, capsys):
    import json

    import torch

    from dkkt_plugin import load_edge_model, packaged_edge_model

    by_name, meta = load_edge_model("fmnist")
    by_path, _ = load_edge_model(packaged_edge_model())
    assert all(torch.equal(a, b) for a, b in zip(by_name.state_dict().values(), by_path.state_dict().values()))
    out = tmp_path / "run"
    code, _, err = _run(["distill", "--method", "dsv", "--edge-model", "fmnist", "--data-root",
                         str(tiny_fashion_mnist), *TINY, "--out", str(out)], capsys)
    assert code == 0, err
    record = json.loads((out / "record.json").read_text())
    assert record["config"]["edge_model"] == "fmnist" and "edge_accuracy" in record["fidelity"]
    code, _, err = _run(["distill", "--method", "dsv", "--edge-model", "fmnistt", "--data-root",
                         str(tiny_fashion_mnist), *TINY, "--out", str(tmp_path / "other")], capsys)
    assert code == 2 and "fmnistt" in err  # a name that is not one is a path, which does not exist


@pytest.mark.parametrize("record, expect", [
    ({"iterations": 100, "iterations_run": 100, "seconds": 25.0, "invocation_seconds": 25.0},
     "m: 100 iterations in 25.0 s (250 ms/it), final loss 0.5"),
    ({"iterations": 100, "iterations_run": 20, "seconds": 25.0, "invocation_seconds": 5.0},
     "m: iterations 80..100: 20 in 5.0 s (250 ms/it); the run: 100 iterations in 25.0 s, final loss 0.5"),
    ({"iterations": 100, "iterations_run": 0, "seconds": 25.0, "invocation_seconds": 0.0},
     "m: already at iteration 100, nothing ran; the run: 25.0 s, final loss 0.5"),
])
def test_summary_separates_this_invocation_from_the_run(record, expect):
    full = {"method": "m", "history": [{"loss": 0.5}], "seconds_per_iteration": 0.25, **record}
    assert cli._summary(full) == expect


RUN3 = ["--dataset", "fashion_mnist", "--ipc", "1", "--pipc", "2", "--net-width", "4", "--net-depth", "1",
        "--device", "cpu", "--threads", "1", "--method", "dm"]


def test_eval_at_evaluates_one_trajectory_at_each_budget(tiny_fashion_mnist, tmp_path, capsys):
    from dkkt_plugin.engine import load_synthetic, read_evaluations

    out = tmp_path / "run"
    code, text, err = _run(["distill", "--data-root", str(tiny_fashion_mnist), *RUN3, "--iterations", "3",
                            "--out", str(out), "--num-eval", "1", "--eval-epochs", "1", "--eval-at", "1", "2"], capsys)
    assert code == 0, err
    assert [e["iteration"] for e in read_evaluations(out)] == [1, 2, 3]
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["it1.pt", "it2.pt", "it3.pt"]
    assert "accuracy at iteration 2:" in text and load_synthetic(out)["iteration"] == 3
    # the same trajectory as a run straight to 2 iterations
    code, _, err = _run(["distill", "--data-root", str(tiny_fashion_mnist), *RUN3, "--iterations", "2",
                         "--out", str(tmp_path / "two")], capsys)
    assert code == 0, err
    import torch

    assert torch.equal(load_synthetic(tmp_path / "two")["images"], load_synthetic(out / "snapshots" / "it2.pt")["images"])


@pytest.mark.parametrize("tail, expect", [
    (["--eval-at", "2"], "add --num-eval N"),
    (["--eval-at", "5", "--num-eval", "1"], "must lie in 1..--iterations (3)"),
])
def test_eval_at_mistakes_are_one_line(tiny_fashion_mnist, tmp_path, capsys, tail, expect):
    code, _, err = _run(["distill", "--data-root", str(tiny_fashion_mnist), *RUN3, "--iterations", "3",
                         "--out", str(tmp_path / "run"), *tail], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and expect in err, err
    assert not (tmp_path / "run").exists()


def test_resume_with_fewer_iterations_is_one_line_and_changes_nothing(tiny_fashion_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["distill", "--data-root", str(tiny_fashion_mnist), *RUN3, "--out", str(out)]
    assert _run([*argv, "--iterations", "3"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, err = _run([*argv, "--iterations", "2", "--resume"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "never goes backwards" in err, err
    code, text, err = _run([*argv, "--iterations", "3", "--resume"], capsys)
    assert code == 0 and "already at iteration 3, nothing ran" in text, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
