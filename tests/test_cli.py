"""The command line: the reference in docs/cli.md is the parser's, one vocabulary, one-line errors."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from larp import cli
from larp.cli import COMMANDS, build_parser, cli_doc, cli_reference, main
from larp.utils import cli as opts
from larp.utils.errors import LarpError

REPO = Path(__file__).resolve().parents[1]


def test_cli_doc_is_current():
    text = (REPO / "docs" / "cli.md").read_text()
    assert text == cli_doc(), "run `make docs` to refresh docs/cli.md"


def test_every_command_is_documented():
    ref = cli_reference()
    for cmd in ("train", "tokenize-dataset", "sample", "eval tokenizer", "fvd", "tokenize", "decode",
                "reconstruct", "demo", "prepare-data ucf101", "synth-data", "data check"):
        assert f"## `larp {cmd}`" in ref, cmd


def test_command_table_matches_the_modules():
    """`larp --help` lists COMMANDS without importing the modules: the table must name every command."""
    parser = build_parser()
    registered = set(cli._commands_action(parser).choices)
    assert registered == set(COMMANDS), "add the new command to larp.cli.COMMANDS"
    for name, (module, _) in COMMANDS.items():  # the module named in the table is the one that adds it
        lazy = cli._commands_action(build_parser(load=[name])).choices[name]
        assert lazy._actions, (name, module)  # a listed-only stub has no options, not even -h


def test_help_imports_no_torch():
    code = ("import sys; from larp.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"larp {__import__('larp').__version__}"


def test_python_m_larp_is_the_command():
    out = subprocess.run([sys.executable, "-m", "larp", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"larp {__import__('larp').__version__}"


def test_unknown_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_unknown_command_suggests(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tokenise", "x.mp4"])
    assert exc.value.code == 2
    assert "unknown command 'tokenise'; did you mean 'tokenize'?" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def _fake_command(monkeypatch, exc: BaseException):
    """`larp synth-data` whose body raises `exc`."""
    def boom(args):
        raise exc

    real = build_parser

    def patched(load=None):
        parser = real(load)
        cli._commands_action(parser).choices["synth-data"].set_defaults(func=boom)
        return parser

    monkeypatch.setattr(cli, "build_parser", patched)


@pytest.mark.parametrize("exc", [LarpError("no such\n  thing"), ValueError("bad value"),
                                 FileNotFoundError("missing.csv")])
def test_user_errors_are_one_line(monkeypatch, capsys, exc):
    _fake_command(monkeypatch, exc)
    assert main(["synth-data", "out"]) == 1
    err = capsys.readouterr().err
    assert err == f"larp synth-data: error: {' '.join(str(exc).split())}\n"


def test_debug_shows_the_traceback(monkeypatch):
    _fake_command(monkeypatch, ValueError("bad value"))
    with pytest.raises(ValueError, match="bad value"):
        main(["synth-data", "out", "--debug"])
    with pytest.raises(ValueError, match="bad value"):
        main(["--debug", "synth-data", "out"])


def test_interrupt_exits_130(monkeypatch, capsys):
    _fake_command(monkeypatch, KeyboardInterrupt())
    assert main(["synth-data", "out"]) == 130
    assert capsys.readouterr().err == "larp synth-data: interrupted\n"


def test_bugs_keep_their_traceback(monkeypatch):
    _fake_command(monkeypatch, ZeroDivisionError("a bug"))
    with pytest.raises(ZeroDivisionError):
        main(["synth-data", "out"])


def test_nested_command_names_itself(monkeypatch, capsys, tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_bytes(b"\x00\x01\xff binary")
    assert main(["eval", "tokenizer", "--tokenizer", str(tmp_path), "--dataset_csv", str(csv)]) == 1
    assert capsys.readouterr().err.startswith("larp eval tokenizer: error: ")


# --- the shared vocabulary ---------------------------------------------------------------------------------

def test_add_option_spellings_aliases_and_default():
    p = argparse.ArgumentParser()
    opts.add_option(p, "num_samples", "--ns", type=int, default=8, help="samples")
    opts.add_output(p, "--output_dir", help="folder")
    action = next(a for a in p._actions if a.dest == "num_samples")
    assert action.option_strings == ["--num_samples", "--num-samples", "--ns"]
    assert action.help == "samples (default: 8)"
    out = next(a for a in p._actions if a.dest == "out")
    assert out.option_strings == ["-o", "--out", "--output_dir", "--output-dir"]
    for spelling in ("-o", "--out", "--output_dir", "--output-dir"):
        assert p.parse_args([spelling, "x"]).out == "x"
    assert p.parse_args(["--num-samples", "3", "-o", "x"]).num_samples == 3


def test_dtype_names_match_the_library():
    from larp.utils.device import DTYPES

    assert tuple(DTYPES) == opts.DTYPE_NAMES


@pytest.mark.parametrize(("kind", "good", "bad"), [
    (opts.positive_int, {"1": 1, "12": 12}, ["0", "-3", "1.5", "x"]),
    (opts.non_negative_int, {"0": 0, "7": 7}, ["-1", "nan"]),
    (opts.positive_float, {"0.5": 0.5, "8": 8.0}, ["0", "-1", "nan", "inf", "1e400"]),
    (opts.non_negative_float, {"0": 0.0, "1.25": 1.25}, ["-0.1", "nan"]),
    (opts.finite_float, {"-2": -2.0}, ["nan", "-inf"]),
    (opts.fraction, {"0": 0.0, "0.25": 0.25}, ["1", "-0.5"]),
    (opts.probability, {"1": 1.0, "0.9": 0.9}, ["0", "1.1"]),
])
def test_number_types(kind, good, bad):
    for text, value in good.items():
        assert kind(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
            kind(text)


def test_bad_numbers_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth-data", "out", "--classes", "0"])
    assert exc.value.code == 2
    assert "expected an integer >= 1, got '0'" in capsys.readouterr().err


def test_check_output(tmp_path):
    target = tmp_path / "a.npz"
    assert opts.check_output(target, overwrite=False) == target
    target.write_bytes(b"")
    with pytest.raises(LarpError, match="a.npz exists already .*pass --overwrite"):
        opts.check_output(target, overwrite=False)
    assert opts.check_output(target, overwrite=True) == target


def _all_parsers():
    parser = build_parser()
    return [("larp", parser), *((f"larp {n}", p) for n, p in cli._subparsers(parser))]


def test_every_option_has_help_with_its_default():
    flags = (argparse._StoreConstAction, argparse._HelpAction,
             argparse._VersionAction, argparse.BooleanOptionalAction, argparse._SubParsersAction)
    missing = []
    for prog, parser in _all_parsers():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            if not action.help:
                missing.append(f"{prog} {name}: no help")
            elif (action.option_strings and not action.required and not isinstance(action, flags)
                  and "default" not in action.help):
                missing.append(f"{prog} {name}: default not shown")
    assert not missing, "\n".join(missing)


def test_every_option_has_both_spellings():
    missing = []
    for prog, parser in _all_parsers():
        for action in parser._actions:
            for s in action.option_strings:
                if s.startswith("--") and ("_" in s[2:] or "-" in s[2:]):
                    other = "--" + (s[2:].replace("_", "-") if "_" in s[2:] else s[2:].replace("-", "_"))
                    if other not in action.option_strings:
                        missing.append(f"{prog} {s}")
    assert not missing, "\n".join(missing)


def test_on_off_options_take_both_spellings():
    parser = build_parser(load=["eval"])
    base = ["eval", "tokenizer", "--tokenizer", "T", "--dataset_csv", "D"]
    assert parser.parse_args(base).det is True
    for spelling in ("--no-det", "--no_det"):
        assert parser.parse_args([*base, spelling]).det is False
    assert parser.parse_args([*base, "--no_det", "--det"]).det is True


def test_sample_takes_the_shared_output_names_and_checks_numbers(capsys):
    parser = build_parser(load=["sample"])
    base = ["sample", "--ar_model", "A", "--tokenizer", "T", "--dataset_csv", "D"]
    for spelling in ("-o", "--out", "--output_dir", "--output-dir"):
        assert parser.parse_args([*base, spelling, "job"]).output_dir == "job"
    for spelling in ("--sample_batch_size", "--sample-batch-size", "--batch_size", "--batch-size"):
        assert parser.parse_args([*base, "-o", "job", spelling, "4"]).sample_batch_size == 4
    for option, value, message in (("--cfg_scale", "nan", "expected a finite number, got 'nan'"),
                                   ("--temperature", "0", "expected a number > 0, got '0'"),
                                   ("--top_p", "1.5", "expected a number in (0, 1], got '1.5'"),
                                   ("--ns", "-1", "expected an integer >= 1, got '-1'")):
        with pytest.raises(SystemExit) as exc:
            main([*base, "-o", "job", option, value])
        assert exc.value.code == 2 and message in capsys.readouterr().err, option


# --- train ------------------------------------------------------------------------------------------------

def test_train_print_config_shows_the_resolved_recipe(tmp_path, capsys):
    import yaml

    assert main(["train", "tokenizer", "--config", str(REPO / "configs" / "tiny_synthetic.yaml"),
                 "optim.lr=0.002", "-o", str(tmp_path / "run"), "--print-config"]) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    assert recipe["optim"]["lr"] == 0.002 and recipe["run"]["out_dir"] == str(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # printed, not trained


def test_train_unknown_keys_suggest_the_closest(capsys):
    recipe = str(REPO / "configs" / "tiny_synthetic.yaml")
    assert main(["train", "tokenizer", "--config", recipe, "optim.lrr=0.1", "--print-config"]) == 1
    err = capsys.readouterr().err
    assert err == "larp train: error: override 'optim.lrr=0.1': unknown key 'optim.lrr'; did you mean 'optim.lr'?\n"
    assert main(["train", "tokenizer", "--config", recipe, "run.max_step=3", "--print_config"]) == 1
    assert "did you mean 'run.max_steps'?" in capsys.readouterr().err
    # Keys of the same section first, and an abbreviation before a spelling that happens to be close.
    assert main(["train", "tokenizer", "--config", recipe, "optim.learning_rate=1e-3", "--print-config"]) == 1
    assert "did you mean 'optim.lr'?" in capsys.readouterr().err
    assert main(["train", "tokenizer", "--config", recipe, "loss.prior_wieght=1", "--print-config"]) == 1
    assert "did you mean 'loss.prior_weight'?" in capsys.readouterr().err


def test_config_keys_suggest_the_closest():
    import dataclasses

    from larp.utils.config import ConfigError, from_dict

    @dataclasses.dataclass
    class Optim:
        lr: float = 1.0
        warmup_steps: int = 0

    with pytest.raises(ConfigError, match=r"optim: unknown key\(s\) \['warmup_step', 'zzz'\]; did you mean "
                                          r"'warmup_step' -> 'warmup_steps'\?; known keys are \['lr', "):
        from_dict(Optim, {"warmup_step": 3, "zzz": 1}, "optim")


def test_demo_names_the_missing_report_extra(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["demo", "--quick", "-o", str(tmp_path / "demo")]) == 1
    assert capsys.readouterr().err == ("larp demo: error: the demo's report needs matplotlib, which is not installed: "
                                       "pip install -e '.[report]'\n")
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(("command", "out", "folder"), [
    (["generate", "--tokenizer", "t", "--ar_model", "a", "--class_id", "0"], "g", True),
    (["tokenize-dataset", "--tokenizer", "t", "--dataset_csv", "d.csv"], "cache", True),
    (["decode", "tokens.npz"], "v.mp4", False),
    (["reconstruct", "v.mp4", "--tokenizer", "t"], "r.mp4", False),
    (["tokenize", "v.mp4", "--tokenizer", "t"], "v.npz", False),
    (["train", "tokenizer", "--config", "configs/tiny_synthetic.yaml"], "run", True),
])
def test_a_second_writer_of_an_output_gets_one_line_naming_the_first(tmp_path, capsys, command, out, folder):
    from larp.utils.outputs import exclusive_output

    target = tmp_path / out
    with exclusive_output(target, "train", folder=folder):
        assert main([*command, "-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{target} is being written by larp train (pid {os.getpid()}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ([out] if folder else [])


# --- threads ------------------------------------------------------------------------------------------------

def test_every_command_takes_threads_and_runs_with_them(monkeypatch):
    import torch

    parser = build_parser()
    leaves = [(name, sub) for name, sub in cli._subparsers(parser) if sub.get_default("func") is not None]
    assert len(leaves) >= len(COMMANDS)
    missing = [name for name, sub in leaves if not any("--threads" in a.option_strings for a in sub._actions)]
    assert missing == []
    seen = []
    real = build_parser

    def patched(load=None):
        parser = real(load)
        cli._commands_action(parser).choices["synth-data"].set_defaults(
            func=lambda args: seen.append(torch.get_num_threads()))
        return parser

    monkeypatch.setattr(cli, "build_parser", patched)
    before = torch.get_num_threads()
    try:
        from larp.utils.threads import default_threads

        torch.set_num_threads(1)
        assert main(["synth-data", "out", "--threads", "2"]) == 0
        assert main(["synth-data", "out"]) == 0  # every CPU this process may use
        assert seen == [2, default_threads()]
    finally:
        torch.set_num_threads(before)


def test_train_threads_override_the_recipe():
    from larp.demo.pipeline import TOKENIZER_RECIPE, recipe_file
    from larp.train.commands import _load

    parser = build_parser(["train"])
    args = parser.parse_args(["train", "tokenizer", "--config", str(recipe_file(TOKENIZER_RECIPE)), "--threads", "3"])
    assert _load(args).run.threads == 3
    args = parser.parse_args(["train", "tokenizer", "--config", str(recipe_file(TOKENIZER_RECIPE))])
    assert _load(args).run.threads == 0  # the recipe's: leave what the command set
