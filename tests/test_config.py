"""Typed configs: pipc, the field walker, overrides, generated flags with help and real defaults."""
import argparse
import dataclasses
import typing
from dataclasses import dataclass, field

import pytest

from dkkt_plugin import registry, settings
from dkkt_plugin.cli import build_parser
from dkkt_plugin.config import add_arguments, build, config_fields, flatten, overrides_from_args, parse_pipc
from dkkt_plugin.demo import DemoConfig
from dkkt_plugin.errors import ConfigError
from dkkt_plugin.methods import DKKTMethodConfig, DSVMethodConfig
from dkkt_plugin.pretrain import PretrainConfig

CONFIGS = sorted({registry.load("methods", n).config_class for n in registry.names("methods")}
                 | {PretrainConfig, DemoConfig, settings.EvalConfig}, key=lambda c: c.__name__)


def _reachable(roots) -> set:
    """The dataclasses ``roots`` are made of: themselves, their bases and their nested configs."""
    seen: set = set()
    todo = list(roots)
    while todo:
        cls = todo.pop()
        if cls in seen or not dataclasses.is_dataclass(cls):
            continue
        seen.add(cls)
        todo += list(cls.__mro__[1:])
        todo += [hint for hint in typing.get_type_hints(cls, localns={"Pipc": settings.Pipc}).values()
                 if dataclasses.is_dataclass(hint)]
    return seen


def test_every_flagged_field_carries_its_help_in_metadata():
    """A field that becomes a flag states its help in ``field(metadata={"help": ...})``, in the
    class that declares (or redeclares) it: the command line reads nothing else."""
    roots = {*settings.METHOD_CONFIGS.values(), PretrainConfig, DemoConfig, settings.EvalConfig}
    classes = _reachable(roots)
    assert settings.BalancedDKKTConfig in classes and settings.AugmentConfig in classes
    missing = []
    for cls in classes:
        hints = typing.get_type_hints(cls, localns={"Pipc": settings.Pipc})
        for f in dataclasses.fields(cls):
            if f.init and not dataclasses.is_dataclass(hints[f.name]) and not f.metadata.get("help", "").strip():
                missing.append(f"{cls.__name__}.{f.name}")
    assert missing == []


def test_help_comes_from_metadata_not_from_comments():
    @dataclass(frozen=True)
    class Settings:
        rate: float = field(default=0.5, metadata={"help": "step size"})
        depth: int = 3  # a comment is not help

    specs = {s.path: s for s in config_fields(Settings)}
    assert specs["rate"].help == "step size" and specs["depth"].help == ""
    parser = argparse.ArgumentParser()
    add_arguments(parser, Settings)
    text = " ".join(parser.format_help().split())
    assert "step size (default: 0.5)" in text and "comment" not in text
    assert "--depth DEPTH depth (default: 3)" in text  # no help: the setting's name


def test_add_arguments_states_the_defaults_of_a_base():
    parser = argparse.ArgumentParser()
    add_arguments(parser, settings.EvalConfig, base=settings.EvalConfig(num_eval=5))
    text = " ".join(parser.format_help().split())
    assert "no evaluation) (default: 5)" in text
    args = parser.parse_args(["--eval-seed", "2"])
    assert overrides_from_args(args) == overrides_from_args(args, settings.EvalConfig) == {"eval_seed": 2}
    assert overrides_from_args(args, PretrainConfig) == {}


def test_pipc_is_parsed_in_one_place():
    assert parse_pipc("all") == "all" and parse_pipc(" ALL ") == "all" and parse_pipc("10") == 10
    for bad in (0, -1, "ten", 1.5, True, None):
        with pytest.raises(ConfigError, match="pipc must be a positive integer or 'all'"):
            parse_pipc(bad)
    assert build(DKKTMethodConfig, {"pipc": "ALL"}).pipc == "all"


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_help_and_a_flag(cls):
    specs = config_fields(cls)
    assert specs and all(s.help for s in specs), [s.path for s in specs if not s.help]
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    text = parser.format_help()
    for spec in specs:
        assert spec.flag in text
    assert overrides_from_args(parser.parse_args([])) == {}  # only given flags become overrides


def test_nested_fields_are_declared_once_and_dotted():
    paths = [s.path for s in config_fields(DKKTMethodConfig)]
    assert "dkkt.distance" in paths and "distance" not in paths and "augment.strategy" in paths
    assert len(paths) == len(set(paths))
    cfg = build(DKKTMethodConfig, {"dkkt.alpha": "0.5", "dkkt.distance": "l1", "downscale": "4,2", "ipc": "3"})
    assert (cfg.dkkt.alpha, cfg.dkkt.distance, cfg.downscale, cfg.ipc) == (0.5, "l1", (4, 2), 3)
    assert flatten(cfg)["dkkt.alpha"] == 0.5
    assert build(DSVMethodConfig, {"downscale": "none"}).downscale == ()  # --downscale none: full size only
    with pytest.raises(ConfigError, match=r"no setting 'alpha' \(did you mean dkkt.alpha\?\)"):
        build(DKKTMethodConfig, {"alpha": 0.2})  # one spelling per setting: the full dotted key


def test_bad_overrides_name_the_setting():
    with pytest.raises(ConfigError, match="no setting 'dkkt.alfa'.*did you mean dkkt.alpha"):
        build(DSVMethodConfig, {"dkkt.alfa": 1})
    with pytest.raises(ConfigError, match="dkkt.distance must be one of l1, l2, cos"):
        build(DSVMethodConfig, {"dkkt.distance": "l3"})
    with pytest.raises(ConfigError, match="ipc must be an integer"):
        build(DSVMethodConfig, {"ipc": "one"})
    with pytest.raises(ConfigError, match="expected true or false"):
        build(PretrainConfig, {"refit_classifier": "maybe"})


def test_distill_help_lists_every_setting_of_the_method_with_its_real_default():
    for method in registry.names("methods"):
        parser = build_parser(["distill", "--method", method])
        sub = parser._subparsers._group_actions[0].choices["distill"]
        text = " ".join(sub.format_help().split())
        cls = registry.load("methods", method).config_class
        for spec in config_fields(cls):
            assert spec.flag in text, (method, spec.flag)
        assert "(default: auto)" in text or method in ("dc", "dsa", "dm", "dm_star")
    text = " ".join(build_parser(["distill"])._subparsers._group_actions[0].choices["distill"].format_help().split())
    assert "--dkkt.distance {l1,l2,cos}" in text and "(default: cos)" in text and "(default: 1000)" in text


def test_builtin_configs_come_from_the_torch_free_settings_module():
    """The command line reads a built-in method's config class from settings.METHOD_CONFIGS (no torch
    import); it must be the class the method itself declares, re-exported where it always was."""
    import dkkt_plugin.losses.dkkt as dkkt_loss
    import dkkt_plugin.methods as methods
    import dkkt_plugin.pretrain  # noqa: F401
    from dkkt_plugin import settings
    from dkkt_plugin.cli import method_config_class

    builtin = {n for n in registry.names("methods") if registry.get("methods", n).value.startswith("dkkt_plugin.")}
    assert builtin == set(settings.METHOD_CONFIGS)
    for name in builtin:
        assert registry.load("methods", name).config_class is settings.METHOD_CONFIGS[name] is method_config_class(name)
    assert methods.DKKTMethodConfig is settings.DKKTMethodConfig and dkkt_loss.DKKTConfig is settings.DKKTConfig
    assert PretrainConfig is settings.PretrainConfig and methods.DistillConfig is settings.DistillConfig
