"""`larp app` on the command line: listed without importing Gradio or torch, the demo's models by default,
one-line errors before anything is served."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from larp.app import commands, core
from larp.cli import main


def test_the_parser_imports_neither_gradio_nor_torch():
    code = ("import sys; from larp.cli import build_parser; p = build_parser(load=['app']); "
            "p.parse_args(['app', '--port', '8000']); print(sorted(m for m in ('gradio', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_max_frames_default_is_the_core_one():
    assert commands.MAX_FRAMES == core.MAX_FRAMES


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    return parser.parse_args(["app", *argv])


def test_models_default_to_the_demo_folder(tmp_path):
    demo = tmp_path / "demo"
    (demo / "tokenizer" / "model").mkdir(parents=True)
    assert commands.resolve_model_paths(_args("--demo", str(demo))) == (demo / "tokenizer" / "model", None)
    (demo / "ar" / "model").mkdir(parents=True)
    assert commands.resolve_model_paths(_args("--demo", str(demo))) == (demo / "tokenizer" / "model",
                                                                         demo / "ar" / "model")
    # A tokenizer of one's own does not pair with the demo's AR model.
    assert commands.resolve_model_paths(_args("--demo", str(demo), "--tokenizer", "t")) == ("t", None)
    assert commands.resolve_model_paths(_args("--tokenizer", "t", "--ar-model", "a")) == ("t", "a")


def test_missing_demo_is_one_line_error(tmp_path, capsys):
    assert main(["app", "--demo", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"larp app: error: no tokenizer at {tmp_path / 'nowhere' / 'tokenizer' / 'model'}: run `make demo` "
                   f"first (or `larp demo --out {tmp_path / 'nowhere'}`), or pass --tokenizer with a model folder or "
                   "Hugging Face repo id")


def test_models_that_do_not_fit_are_refused_before_serving(model_dirs, capsys):
    if importlib.util.find_spec("gradio") is None:  # (importing it only to skip would cost seconds)
        pytest.skip("larp app checks for Gradio first: pip install -e '.[app]'")
    assert main(["app", "--tokenizer", str(model_dirs["tokenizer"]), "--ar_model", str(model_dirs["fp"])]) == 1
    assert "is a frame-prediction model; pass it with --fp_model" in capsys.readouterr().err


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else find_spec(name, *a))
    assert main(["app", "--tokenizer", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == ("larp app: error: the page needs Gradio, which is not installed: "
                                               "pip install -e '.[app]'")


def test_gradio_5_is_refused(monkeypatch, capsys, tmp_path):
    import importlib.metadata

    if importlib.util.find_spec("gradio") is None:
        pytest.skip("checks the version of an installed Gradio")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "5.50.0")
    assert main(["app", "--tokenizer", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == ("larp app: error: the page needs Gradio 6 (found 5.50.0, whose page "
                                               "loads scripts from public CDNs): pip install -e '.[app]'")


def test_port_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "--port", "0"])
    assert exit_info.value.code == 2 and "expected a port in [1, 65535], got '0'" in capsys.readouterr().err


def test_help_names_the_tabs_and_the_extra(capsys):
    with pytest.raises(SystemExit):
        main(["app", "--help"])
    out = capsys.readouterr().out
    for text in ("Reconstruct", "Generate", "Continue", "pip install -e '.[app]'", "--fp_model", "--class_names"):
        assert text in out
    assert Path(core.DEMO_DIR) == Path("runs/demo") and "(default: runs/demo)" in " ".join(out.split())
