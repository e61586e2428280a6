"""The README and docs/ stay true: commands parse, Python runs, links, anchors and citations resolve.

Every ``dkkt ...`` line of a ```bash block (and any ``$ dkkt ...`` output line) is parsed by the
real ``dkkt`` parser, so a renamed or removed flag, or a value of the wrong type, fails here.
``tox -e`` names must be environments of tox.ini, ``python -m X`` / ``python FILE`` targets must
exist, the README's test command must be the one CI runs, and the ```python blocks run in order
in one namespace. Links of the README and of docs/ must resolve (with their #anchors), every
"docs/PAGE.md, 'Section'" citation in the repository must name a heading of that page, no file
may cite the design notes that the repository does not contain, and the README and docs/ state
facts, not the history of their development.
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


def command_words(line: str) -> list[list[str]]:
    """The commands of one shell line: comments and ``VAR=x`` prefixes dropped, ``a && b`` split
    into two commands, ``python3 -m pip`` / ``python -m tox`` read as ``pip`` / ``tox``."""
    out = []
    for part in line.split("&&"):
        words = shlex.split(part, comments=True)
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words = words[1:]
        if words[:2] in (["python", "-m"], ["python3", "-m"]) and words[2:3] in (["pip"], ["tox"]):
            words = words[2:]
        if words:
            out.append(words)
    return out


def shell_commands() -> list[list[str]]:
    """Every command of the bash blocks (continuation lines joined; see :func:`command_words`)."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            out += command_words(line)
    return out


DKKT_LINES = [w[1:] for w in shell_commands() if w[0] == "dkkt"]
DKKT_LINES += [shlex.split(m) for m in re.findall(r"^\$ dkkt (.*)$", README, flags=re.M)]


def test_readme_has_the_commands_it_promises():
    commands = [" ".join(w) for w in shell_commands()]
    assert "pip install torch==2.13.0 ." in commands and "dkkt demo --out /tmp/demo" in commands  # install, run
    assert "pip install tox" in commands and "tox -e py,slow,torchvision" in commands  # install and test
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


# -- the README's test command is CI's ---------------------------------------------------------
def test_readme_test_command_is_the_one_ci_runs():
    ci = [w for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if not line.lstrip().startswith("#") for w in command_words(line) if w[0] == "tox"]
    assert ci, ".ci/run runs no tox command"
    assert ci[-1] in shell_commands(), f"README lacks CI's test command {' '.join(ci[-1])!r}"


# -- docs/: links, anchors, citations ---------------------------------------------------------
DOCS = ROOT / "docs"
PAGES = ("method", "results", "speed", "design")
DESIGN_NOTES = "DESIGN" + ".md"  # the steering notes kept outside the repository
SKIP_DIRS = {".git", ".tox", "build", "dist", "__pycache__", ".venv", "runs", ".pytest_cache"}
TEXT_SUFFIXES = {".py", ".md", ".cfg", ".toml", ".ini", ".txt", ".sh", ".c", ".rst"}


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def headings(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {h.strip() for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def repo_text_files():
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT).parts
        if (path.is_file() and path.suffix in TEXT_SUFFIXES and not SKIP_DIRS.intersection(rel)
                and not any(p.endswith(".egg-info") for p in rel)):
            yield path


def markdown_links(text: str) -> list[tuple[str, str]]:
    """(target, anchor) of every relative Markdown link outside code blocks."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return [(t, a) for t, a in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text)
            if not t.startswith(("http://", "https://", "mailto:"))]


def test_readme_links_every_docs_page():
    linked = {t for t, _ in markdown_links(README)}
    for page in PAGES:
        assert (DOCS / f"{page}.md").is_file(), f"docs/{page}.md is missing"
        assert f"docs/{page}.md" in linked, f"the README does not link docs/{page}.md"


@pytest.mark.parametrize("page", ["README.md"] + [f"docs/{p}.md" for p in PAGES])
def test_links_and_anchors_resolve(page):
    source = ROOT / page
    for target, anchor in markdown_links(source.read_text(encoding="utf-8")):
        path = (source.parent / target).resolve() if target else source
        assert path.is_relative_to(ROOT) and path.exists(), f"{page}: link to {target!r} does not resolve"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page}: {target}#{anchor}: no such heading in {path.name}"


def test_docs_section_citations_name_existing_headings():
    cited = 0
    for path in repo_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for page, section in re.findall(r"docs/([a-z_]+)\.md,[\s#]+['\"]([^'\"]+)['\"]", text):
            section = re.sub(r"\s*\n\s*#?\s*", " ", section)  # a citation wrapped across lines
            cited += 1
            target = DOCS / f"{page}.md"
            assert target.is_file(), f"{path.relative_to(ROOT)} cites docs/{page}.md, which does not exist"
            assert section in headings(target), \
                f"{path.relative_to(ROOT)} cites docs/{page}.md, {section!r}: no such heading"
    assert cited, "no file cites a docs/ section (the pattern above no longer matches anything)"


def test_no_file_cites_the_design_notes():
    citing = [str(p.relative_to(ROOT)) for p in repo_text_files()
              if DESIGN_NOTES in p.read_text(encoding="utf-8", errors="replace")]
    assert not citing, f"these files cite {DESIGN_NOTES}, which the repository does not contain " \
                       f"(cite a docs/ page section instead): {citing}"


# -- facts, not history -----------------------------------------------------------------------
HISTORY = re.compile(r"\bsittings?\b|\bissue\s*#?\d+|\b(?:first|second|third|\d+(?:st|nd|rd|th)) round\b"
                     r"|\bround \d+\b|\brounds of work\b", re.I)
COMMIT = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")


@pytest.mark.parametrize("page", ["README.md"] + [f"docs/{p}.md" for p in PAGES])
def test_readme_and_docs_state_no_development_history(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    assert not HISTORY.findall(text), f"{page} narrates its development: {HISTORY.findall(text)}"
    if page != "docs/results.md":  # a stored result's commit belongs to its record
        assert not COMMIT.findall(text), f"{page} names commits: {COMMIT.findall(text)}"


def test_readme_names_no_machine_of_ours():
    found = re.findall(r"EPYC|Xeon|\bZen ?\d|family \d+|\bUTC\b", README)
    assert not found, f"the README names the development machine: {found}"
