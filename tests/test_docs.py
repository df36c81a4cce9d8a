"""The README and docs: links that resolve, commands that parse, and no wording a reader cannot follow."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from larp.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".json", ".html", ".css", ".js"}
SCANNED = ["README.md", "Makefile", "pyproject.toml", "src", "tests", "docs", "configs", "benchmarks", ".ci"]

# References a reader of the repository cannot follow: a file that is not in it, numbered work items, or
# the people and processes that wrote it.
INTERNAL = [
    (re.compile(r"LARP_SPEC"), "a file outside the repository"),
    (re.compile(r"\bspec(ification)? (section|step|§)\s*\d", re.I), "a section of a file outside the repository"),
    (re.compile(r"\bissue\s*#?\d+", re.I), "an issue number"),
    (re.compile(r"\b(first|second|third|lead|this|other|previous|earlier|later)\s+sessions?\b", re.I), "a session"),
    (re.compile(r"\bno session\b", re.I), "a session"),
    (re.compile(r"\bother agents?\b", re.I), "the authors' process"),
]


def _text_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = REPO / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name == "run")
                      and "__pycache__" not in p.parts and ".egg-info" not in str(p)]
    return files


def test_no_internal_wording():
    found = []
    for path in _text_files():
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for pattern, what in INTERNAL:
                if pattern.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {what}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("doc", ["README.md", "docs/method.md", "docs/architecture.md", "docs/cli.md"])
def test_relative_links_resolve(doc):
    text = (REPO / doc).read_text()
    broken = [target for target in re.findall(r"\]\(([^)#\s]+)\)", text)
              if "://" not in target and not (REPO / doc).parent.joinpath(target).exists()]
    assert not broken, broken


def _readme_commands() -> list[list[str]]:
    """Every `larp ...` line of the README's bash blocks (continuations joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "larp":
                commands.append(words[1:])
            elif words[:4] == ["torchrun", "--nproc_per_node=8", "-m", "larp.cli"]:
                commands.append(words[4:])
    return commands


def test_readme_commands_parse():
    """A newcomer copies these: each must name a command and options that exist, as written."""
    commands = _readme_commands()
    assert len(commands) >= 15
    for argv in commands:
        assert argv[0] in COMMANDS, argv
        parser = build_parser(load=[argv[0]])
        args, extra = parser.parse_known_args(argv)
        assert all("=" in e and not e.startswith("-") for e in extra), (argv, extra)
        assert getattr(args, "func", None) is not None, argv
