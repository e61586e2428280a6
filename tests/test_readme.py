"""The README stays true: its commands parse, its Python runs, its links and tox envs exist.

Every ``dkkt ...`` line of a ```bash block (and the ``$ dkkt ...`` line of the demo output) is
parsed by the real ``dkkt`` parser, so a renamed or removed flag, or a value of the wrong type,
fails here. ``tox -e`` names must be environments of tox.ini, ``python -m X`` / ``python FILE``
targets must exist, and the ```python blocks run in order in one namespace.
"""
from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import pytest

from dkkt_plugin import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.M | re.S)


def shell_commands() -> list[list[str]]:
    """Every command of the bash blocks: continuation lines joined, comments and ``VAR=x``
    prefixes dropped, ``a && b`` split into two commands."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                    words = words[1:]
                if words:
                    out.append(words)
    return out


DKKT_LINES = [w[1:] for w in shell_commands() if w[0] == "dkkt"]
DKKT_LINES += [shlex.split(m) for m in re.findall(r"^\$ dkkt (.*)$", README, flags=re.M)]


def test_readme_has_the_commands_it_promises():
    commands = [" ".join(w) for w in shell_commands()]
    assert "pip install torch==2.13.0 ." in commands and "dkkt demo --out /tmp/demo" in commands  # install, run
    assert "pip install tox" in commands and "tox -e py,torchvision" in commands  # install and test
    assert {w[0] for w in DKKT_LINES} >= {"pretrain", "distill", "evaluate", "demo", "plugins"}


@pytest.mark.parametrize("argv", DKKT_LINES, ids=[" ".join(a)[:60] for a in DKKT_LINES])
def test_readme_dkkt_command_parses(argv, capsys):
    try:
        args = cli.build_parser(argv).parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`dkkt {' '.join(argv)}` does not parse (exit {exc.code}): {capsys.readouterr().err}")
    assert args.func is not None


def test_readme_tox_envs_modules_and_files_exist():
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    envs = {"py"} | {s.split(":", 1)[1] for s in tox.sections() if s.startswith("testenv:")}
    for words in shell_commands():
        if words[0] == "tox" and "-e" in words:
            assert set(words[words.index("-e") + 1].split(",")) <= envs, words
        if words[0] == "python" and words[1] == "-m":
            module = ROOT / words[2].replace(".", "/")
            assert module.with_suffix(".py").is_file() or (module / "__main__.py").is_file(), words
        elif words[0] == "python":
            assert (ROOT / words[1]).is_file(), words


def test_readme_links_point_inside_the_repository():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith(("http://", "https://")):
            path = (ROOT / target).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), target


@pytest.mark.realdata
@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs apt-get install dataset-fashion-mnist")
def test_readme_python_blocks_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # anything a block writes lands here
    namespace: dict = {}
    for code in blocks("python"):
        if "\n...\n" in f"\n{code}":  # an excerpt of a longer file (a line of "..."), not a program
            continue
        exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["loss"].ndim == 0 and set(vars(namespace["parts"])) >= {"total", "stationarity"}
