"""The ``dkkt`` command line."""
import pytest

from dkkt_plugin import cli
import os

BUILTIN = {
    "losses": {"dkkt", "dm", "gradient_matching"},
    "initializers": {"noise", "real", "dsv"},
    "datasets": {"practical_subset", "cifar10", "fashion_mnist"},
    "augmentations": {"dsa"},
    "methods": {"dm", "dm_star", "dc", "dsa", "dsv", "dm_dkkt"},
}
EXAMPLE_PLUGIN = os.environ.get("DKKT_EXPECT_EXAMPLE_PLUGIN") == "1"


def test_plugins_lists_all_builtins(capsys):
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    for group, names in BUILTIN.items():
        assert f"dkkt_plugin.{group}" in out
        for name in names:
            assert f"  {name} " in out
    assert out.count("[dkkt-plugin] ok") >= 10
    if EXAMPLE_PLUGIN:
        assert "constant" in out and "[dkkt-example-plugin] ok" in out


def test_plugins_reports_broken_plugin_and_lists_the_rest(fake_distribution, capsys):
    assert cli.main(["plugins"]) == 1
    captured = capsys.readouterr()
    assert "exploding" in captured.out and "BROKEN: RuntimeError: boom at import" in captured.out
    assert "fine_dkkt_thing_mod:init" in captured.out and "DKKTLoss" in captured.out
    assert "1 plugin(s) failed" in captured.err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage: dkkt" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
