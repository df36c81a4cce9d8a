"""Budgets: every size a file or an option declares is refused before the work when it is over budget,
with a one-line error naming the option that raises it."""

from __future__ import annotations

import math

import pytest

from larp.cli import main
from larp.data.video_io import write_mp4
from larp.sample.generate import check_sampling_args
from larp.sample.generate_cli import GenerateConfig, check_config
from larp.utils.budget import BudgetError, check_budget, check_memory
from larp.videos.tokens import tokenize_video
from tests.videos.test_tokens import PixelCodec, random_frames


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_budget_messages_name_the_sizes_and_the_option():
    with pytest.raises(BudgetError, match=r"^the number of frames of v.mp4 is 100,000,001, over the budget of "
                                          r"100,000; pass --max_frames 100000001 \(or more\) to allow it"):
        check_budget("the number of frames of v.mp4", 100_000_001, 100_000, "--max_frames")
    with pytest.raises(BudgetError, match=r"needs 4,800 MB at once, over the budget of 2,048 MB.*--max_memory_mb "
                                          r"4801"):
        check_memory("a batch", 4_800_000_000)
    check_budget("x", 5, 5, "--x")  # at the budget is fine


def test_decode_refuses_a_token_file_over_budget_before_loading_a_model(tmp_path, capsys):
    path = tokenize_video(PixelCodec(), random_frames(5, 8, 8), fps=25.0).save(tmp_path / "t.npz")
    args = ["decode", str(path), "-o", str(tmp_path / "o.mp4"), "--tokenizer", str(tmp_path / "no-model")]
    assert main([*args, "--max_frames", "4"]) == 1
    assert "the number of frames of the video" in _error(capsys) and not (tmp_path / "o.mp4").exists()
    assert main([*args, "--max_frame_pixels", "63"]) == 1
    assert "the frame size of the video" in _error(capsys)
    assert main(args) == 1  # within budget: now the missing tokenizer is the error
    assert "no-model" in _error(capsys)


def test_reconstruct_and_tokenize_refuse_a_video_over_budget(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    write_mp4(video, random_frames(3, 48, 64), fps=8)
    assert main(["reconstruct", str(video), "--tokenizer", "none", "-o", str(tmp_path / "r.mp4"),
                 "--max_frame_pixels", "3000"]) == 1
    assert "the frame size of " in (err := _error(capsys)) and "(64x48, in pixels) is 3,072, over the budget of " \
        "3,000; pass --max_frame_pixels 3072" in err
    assert main(["tokenize", str(video), "--tokenizer", "none", "-o", str(tmp_path / "t.npz"),
                 "--max_frames", "2"]) == 1
    assert "the number of frames of" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--frame_prediction", "--fp_model", "fp", "--context", "c.mp4", "--num_frames", "100000000"],
     "--num_frames is 100,000,000, over the budget of 100,000; pass --max_frames 100000000"),
    (["--ar_model", "ar", "--class_id", "0", "--cfg_scale", "1e38"], "cfg_scale must be >= 0 and <= 1000"),
    (["--ar_model", "ar", "--class_id", "0", "--temperature", "1e-30"], "temperature must be 0 (argmax) or in"),
])
def test_generate_refuses_absurd_options_before_loading_models(tmp_path, capsys, extra, message):
    assert main(["generate", "--tokenizer", "none", "-o", str(tmp_path / "g"), *extra]) == 1
    assert message in _error(capsys)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_sampling_values_are_checked_in_the_api_too(bad):
    with pytest.raises(ValueError, match="cfg_scale must be"):
        check_sampling_args(bad, 1.0, 0, 1.0)
    with pytest.raises(ValueError, match="temperature must be"):
        check_sampling_args(1.0, bad, 0, 1.0)
    with pytest.raises(ValueError, match="temperature must be"):
        check_config(GenerateConfig(tokenizer="t", out="o", ar_model="a", class_id=0, temperature=bad))


@pytest.mark.parametrize("args", [
    ["fvd", "a", "b", "--size", "100000"],
    ["fvd", "a", "b", "--num_frames", "100000000"],
    ["fvd", "a", "b", "--num_frames", "100000", "--size", "256"],
    ["synth-data", "OUT", "--size", "100000"],
    ["synth-data", "OUT", "--clips_per_class", "100000"],
])
def test_eval_and_data_sizes_are_budgeted(tmp_path, capsys, args):
    args = [str(tmp_path / a) if a in ("a", "b", "OUT") else a for a in args]
    assert main(args) == 1
    assert "over the budget of" in _error(capsys)
    assert not (tmp_path / "OUT").exists()


def test_app_port_is_range_checked(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "--tokenizer", "t", "--port", "70000"])
    assert exit_info.value.code == 2
    assert "expected a port in [1, 65535], got '70000'" in capsys.readouterr().err


