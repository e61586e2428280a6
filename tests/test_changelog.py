"""CHANGELOG.md stays true: the package's version has its section, and every restore flag or
keyword that a "Changed defaults" entry names exists.

A ``dkkt ...`` span of a "Changed defaults" section (in backticks) must name only flags that
``dkkt <command> [--method M] --help`` lists, and must parse with the real parser (so a value such
as ``--downscale none`` stays valid); a span holding flags but no command must name flags that
some built-in command lists. A span that is a Python call (``DKKTConfig(stationarity="ce")``)
must call a public name with keywords it takes; a config class called with literal values only is
built, so an invalid value fails here too.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import inspect
import io
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest

import dkkt_plugin
from dkkt_plugin import cli

ROOT = Path(__file__).resolve().parents[1]
CHANGELOG = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
BUILTIN_METHODS = ("dm", "dm_star", "dc", "dsa", "dsv", "dm_dkkt")
# where the public names of restore keywords live, searched in this order
NAMESPACES = ("dkkt_plugin", "dkkt_plugin.methods", "dkkt_plugin.losses", "dkkt_plugin.runtime")
# callables whose **kwargs go to a config class: their keywords may be that class's fields
FORWARDS = {"DKKTLoss": "DKKTConfig"}
OPTION = re.compile(r"^\s+(?:-\w(?: \S+)?, )?(--[\w.-]+)", re.M)  # an option line of argparse help


def release_sections(text: str) -> dict[str, str]:
    """``{version: body}`` of every ``## [version]`` heading, in file order."""
    parts = re.split(r"^## \[([^\]]+)\][^\n]*\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def subsection(body: str, title: str) -> str:
    match = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^### |\Z)", body, flags=re.M | re.S)
    return match.group(1) if match else ""


def spans(text: str) -> list[str]:
    """The backticked spans of ``text`` (a span may wrap over lines)."""
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", text)]


SECTIONS = release_sections(CHANGELOG)
CHANGED_DEFAULTS = subsection(SECTIONS.get(dkkt_plugin.__version__, ""), "Changed defaults")
SPANS = spans(CHANGED_DEFAULTS)
COMMANDS = [s for s in SPANS if s.startswith("dkkt ")]
BARE_FLAGS = sorted({w for s in SPANS if not s.startswith("dkkt ") and re.match(r"^--\w", s)
                     for w in shlex.split(s) if w.startswith("--")})
CALLS = [s for s in SPANS if re.match(r"^[A-Za-z_][\w.]*\(.*\)$", s)]


@lru_cache(maxsize=None)
def listed_flags(argv: tuple[str, ...]) -> frozenset[str]:
    """The options that ``dkkt <argv> --help`` lists, run in-process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code in (0, None), f"`dkkt {' '.join(argv)} --help` failed"
    return frozenset(OPTION.findall(out.getvalue()))


def help_argv(words: list[str]) -> tuple[str, ...]:
    """The command (and, for distill, the method) whose --help lists the flags of ``words``."""
    command = words[0]
    if command == "distill" and "--method" in words:
        return (command, "--method", words[words.index("--method") + 1])
    return (command,)


def required_options(argv: list[str]) -> list[str]:
    """Placeholders for the options the subcommand requires that ``argv`` does not give."""
    parser = cli.build_parser(argv)
    sub = parser._subparsers._group_actions[0].choices[argv[0]]
    extra = []
    for action in sub._actions:
        if action.required and action.option_strings and not set(action.option_strings) & set(argv):
            extra += [action.option_strings[0], "placeholder"]
    return extra


def public(name: str):
    for namespace in NAMESPACES:
        obj = getattr(importlib.import_module(namespace), name, None)
        if obj is not None:
            return obj
    return None


def test_the_package_version_has_the_newest_release_section():
    version = dkkt_plugin.__version__
    assert version in SECTIONS, f"CHANGELOG.md has no `## [{version}]` section for the package's version"
    released = [v for v in SECTIONS if v.lower() != "unreleased"]
    assert released[0] == version, (f"the newest section of CHANGELOG.md is [{released[0]}] but the "
                                    f"package is {version}: bump dkkt_plugin.__version__ or fix the file")
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", CHANGELOG, flags=re.M), \
        f"the [{version}] heading needs a date: `## [{version}] - YYYY-MM-DD`"


def test_changed_defaults_name_their_restore_flags():
    assert CHANGED_DEFAULTS.strip(), f"the [{dkkt_plugin.__version__}] section has no 'Changed defaults' list"
    for entry in re.split(r"^- ", CHANGED_DEFAULTS, flags=re.M)[1:]:
        assert "Restore:" in entry, f"a changed default without a 'Restore:' (flag, keyword or 'no flag'): {entry[:80]}"
    assert COMMANDS, "no `dkkt ...` restore command in 'Changed defaults'"


@pytest.mark.parametrize("span", COMMANDS)
def test_changed_defaults_command_flags_exist(span):
    words = shlex.split(span)[1:]
    argv = help_argv(words)
    listed = listed_flags(argv)
    missing = [w.split("=", 1)[0] for w in words if w.startswith("--") and w.split("=", 1)[0] not in listed]
    assert not missing, f"CHANGELOG.md names {missing} in `{span}`, but `dkkt {' '.join(argv)} --help` lists no such flag"
    full = [*words, *required_options(words)]
    try:
        cli.build_parser(full).parse_args(full)
    except SystemExit as exc:
        pytest.fail(f"`{span}` from CHANGELOG.md does not parse (exit {exc.code})")


@pytest.mark.parametrize("flag", BARE_FLAGS)
def test_changed_defaults_bare_flags_exist(flag):
    commands = [("distill", "--method", m) for m in BUILTIN_METHODS] + [("pretrain",), ("evaluate",)]
    assert any(flag in listed_flags(c) for c in commands), f"CHANGELOG.md names {flag}, which no dkkt command lists"


@pytest.mark.parametrize("span", CALLS)
def test_changed_defaults_python_keywords_exist(span):
    try:
        tree = ast.parse(span, mode="eval")
    except SyntaxError:
        pytest.fail(f"`{span}` in CHANGELOG.md looks like a call but is not Python")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    for call in calls:
        assert isinstance(call.func, ast.Name), f"`{span}`: call a public name directly"
        name = call.func.id
        obj = public(name)
        assert obj is not None, f"`{span}`: {name} is not a public name of {', '.join(NAMESPACES)}"
        params = inspect.signature(obj).parameters
        accepted = set(params)
        if name in FORWARDS:
            accepted |= {f.name for f in dataclasses.fields(public(FORWARDS[name]))}
        unknown = [k.arg for k in call.keywords if k.arg not in accepted]
        assert not unknown, f"`{span}`: {name} takes no keyword {unknown}"
        if dataclasses.is_dataclass(obj) and not call.args and all(_literal(k.value) for k in call.keywords):
            obj(**{k.arg: ast.literal_eval(k.value) for k in call.keywords})  # an invalid value raises


def _literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
    except ValueError:
        return False
    return True
