"""The command line: the README's reference is the parser's, overrides anywhere, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from larp.cli import README_END, README_START, cli_reference, main

REPO = Path(__file__).resolve().parents[1]


def test_readme_cli_reference_is_current():
    text = (REPO / "README.md").read_text()
    embedded = text.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    assert embedded == cli_reference().strip(), "run `make readme` to refresh the README's CLI reference"


def test_every_command_is_documented():
    ref = cli_reference()
    for cmd in ("train", "tokenize-dataset", "sample", "eval tokenizer", "fvd", "tokenize", "decode",
                "reconstruct", "demo", "prepare-data ucf101", "synth-data"):
        assert f"#### `larp {cmd}`" in ref, cmd


def test_unknown_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
