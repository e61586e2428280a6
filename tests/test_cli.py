"""The ``dkkt`` command line (``plugins`` here; the engine's subcommands in test_distill etc.)."""
import os

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


@pytest.mark.parametrize("flag, key, expected", [([], "compile_step", None), ([], "fused", None),
                                                 (["--eval-compile", "true"], "compile_step", True),
                                                 (["--eval-compile", "off"], "compile_step", False),
                                                 (["--eval-fused", "false"], "fused", False)])
def test_evaluate_passes_eval_compile_and_fused(monkeypatch, tmp_path, flag, key, expected):
    from dkkt_plugin import evaluation

    seen = {}

    def fake_evaluate(synthetic, **kwargs):
        seen.update(kwargs)
        return evaluation.EvalResult("fake protocol", [0.5], [0])

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    assert cli.main(["evaluate", "--synthetic", str(tmp_path / "synthetic.pt"), "--dataset", "fashion_mnist", *flag]) == 0
    assert seen[key] is expected


def test_eval_compile_rejects_other_words(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", "--synthetic", "x.pt", "--eval-compile", "maybe"])
    assert exit_.value.code == 2 and "--eval-compile: expected true or false, got 'maybe'" in capsys.readouterr().err
