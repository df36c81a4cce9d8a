"""Long videos by chained frame prediction: `generate_long` and `larp generate`."""

from __future__ import annotations

import json

import pytest
import torch

from larp import LARPAR, LARPTokenizer
from larp.cli import main
from larp.data.video_io import probe_video, read_video
from larp.data.video_write import write_mp4
from larp.sample.condition import frame_prediction_condition, pad_context
from larp.sample.long import generate_long, iter_long
from tests.conftest import official


@pytest.fixture(scope="module")
def tiny():
    tok = LARPTokenizer.from_pretrained(official("tokenizer_tiny")).eval()
    fp = LARPAR.from_pretrained(official("ar_fp_tiny")).eval()
    return tok, fp


def test_long_video_chains_windows_on_the_last_frames(tiny):
    tok, fp = tiny
    start = torch.rand(2, 3, 6, 32, 32)
    out = generate_long(fp, tok, start, 20, context_frames=3, generator=torch.Generator().manual_seed(0))
    assert out.video.shape == (2, 3, 20, 32, 32) and out.start_frames == 6
    assert torch.equal(out.video[:, :, :6], start)  # the start frames are kept as given
    # Each window adds T - k = 5 new frames: 6 + 5 * 3 = 21 >= 20, so three windows.
    assert len(out.conditions) == len(out.tokens) == 3
    full = out.video
    for i, (cond, tokens) in enumerate(zip(out.conditions, out.tokens, strict=True)):
        end = 6 + 5 * i  # frames before window i
        # The condition is the tokenizer's encoding of exactly the last 3 frames so far, padded, + separator.
        assert torch.equal(cond, frame_prediction_condition(tok, full[:, :, end - 3:end]))
        assert cond[:, -1].tolist() == [128, 128]
        # The appended frames are frames k.. of the decoded clip.
        with torch.no_grad():
            clip = tok.decode(tokens).clamp(0, 1)
        n = min(5, 20 - end)
        assert torch.equal(full[:, :, end:end + n], clip[:, :, 3:3 + n])


def test_the_stream_is_the_whole_video_and_keeps_only_the_context(tiny, monkeypatch):
    """`iter_long` yields the start, then each window's new frames: together `generate_long`'s video; the
    frames kept between windows are the context only, however long the video."""
    tok, fp = tiny
    start = torch.rand(1, 3, 6, 32, 32)
    whole = generate_long(fp, tok, start, 30, context_frames=3, generator=torch.Generator().manual_seed(2))
    seen = []
    real = frame_prediction_condition

    def spy(tokenizer, context):
        seen.append(context.shape[2])
        return real(tokenizer, context)

    monkeypatch.setattr("larp.sample.long.frame_prediction_condition", spy)
    chunks = list(iter_long(fp, tok, start, 30, context_frames=3, generator=torch.Generator().manual_seed(2)))
    assert [c.shape[2] for c in chunks] == [6, 5, 5, 5, 5, 4]  # 6 + 5 x 4 + 4 = 30
    assert torch.equal(torch.cat(chunks, dim=2), whole.video)
    assert seen == [3] * 5


def test_long_video_is_determined_by_the_seed(tiny):
    tok, fp = tiny
    start = torch.rand(1, 3, 8, 32, 32)
    a = generate_long(fp, tok, start, 14, generator=torch.Generator().manual_seed(4))
    b = generate_long(fp, tok, start, 14, generator=torch.Generator().manual_seed(4))
    c = generate_long(fp, tok, start, 14, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.video, b.video) and all(map(torch.equal, a.tokens, b.tokens))
    assert not torch.equal(a.tokens[0], c.tokens[0])


def test_a_short_start_conditions_on_all_its_frames(tiny):
    tok, fp = tiny
    start = torch.rand(1, 3, 2, 32, 32)
    out = generate_long(fp, tok, start, 10, context_frames=5, generator=torch.Generator().manual_seed(1))
    # Window 0 sees the 2 start frames (6 new frames: 8 in all), window 1 the last 5 of those 8.
    assert len(out.conditions) == 2
    assert torch.equal(out.conditions[0], frame_prediction_condition(tok, start))
    assert torch.equal(out.conditions[1], frame_prediction_condition(tok, out.video[:, :, 3:8]))


def test_long_video_arguments_are_checked(tiny):
    tok, fp = tiny
    start = torch.rand(1, 3, 8, 32, 32)
    with pytest.raises(ValueError, match="need a frame-prediction AR model"):
        generate_long(LARPAR.from_pretrained(official("ar_tiny")), tok, start, 20)
    with pytest.raises(ValueError, match=r"context_frames must be in \[1, 7\] for this 8-frame tokenizer, got 8"):
        generate_long(fp, tok, start, 20, context_frames=8)
    with pytest.raises(ValueError, match=r"num_frames \(8\) must exceed the 8 frames of the start video"):
        generate_long(fp, tok, start, 8)
    with pytest.raises(ValueError, match=r"expected a start video \(B, 3, F, 32, 32\)"):
        generate_long(fp, tok, torch.rand(1, 3, 8, 16, 16), 20)


def test_pad_context_repeats_the_last_context_frame():
    clips = torch.arange(2 * 3 * 6 * 2 * 2, dtype=torch.float32).view(2, 3, 6, 2, 2)
    padded = pad_context(clips, 2)
    assert padded.shape == clips.shape
    assert torch.equal(padded[:, :, :2], clips[:, :, :2])
    assert all(torch.equal(padded[:, :, i], clips[:, :, 1]) for i in range(2, 6))
    assert pad_context(clips[:, :, :3], 3, 8).shape[2] == 8
    with pytest.raises(ValueError, match="expected 1 to 6 context frames, got 7"):
        pad_context(clips, 7)


# ------------------------------------------------------------------------------------------ the command
def _args(out, *extra: str) -> list[str]:
    return ["generate", "--tokenizer", str(official("tokenizer_tiny")), "-o", str(out), "--device", "cpu", *extra]


@pytest.mark.slow
def test_generate_command_writes_a_40_frame_continuation(tmp_path):
    context = tmp_path / "context.mp4"
    write_mp4(context, torch.rand(3, 12, 48, 64), fps=8)  # longer than a clip, not square: read as one clip
    out = tmp_path / "out"
    argv = _args(out, "--frame_prediction", "--fp_model", str(official("ar_fp_tiny")), "--context", str(context),
                 "--num_frames", "40", "--seed", "3")
    assert main(argv) == 0
    info = probe_video(out / "long_000.mp4")
    assert (info.num_frames, info.width, info.height) == (40, 32, 32)
    record = json.loads((out / "generate.json").read_text())
    assert record["start_frames"] == 8 and record["windows"] == 11  # 8 + 11 * 3 >= 40
    assert record["config"]["seed"] == 3 and record["config"]["num_cond_frames"] == 5
    first = read_video(out / "long_000.mp4")[0]
    assert main(argv + ["--overwrite"]) == 0  # the same seed writes the same video
    assert (read_video(out / "long_000.mp4")[0] == first).all()


def test_generate_command_writes_class_samples_and_checks_options(tmp_path, capsys):
    out = tmp_path / "cls"
    assert main(_args(out, "--ar_model", str(official("ar_tiny")), "--class_id", "2", "--num_videos", "2")) == 0
    assert sorted(p.name for p in out.glob("*.mp4")) == ["class2_000.mp4", "class2_001.mp4"]
    assert probe_video(out / "class2_001.mp4").num_frames == 8
    assert json.loads((out / "generate.json").read_text())["config"]["cfg_scale"] == 1.25
    capsys.readouterr()
    bad = [
        (["--ar_model", str(official("ar_tiny")), "--class_id", "2"], "exists already; pass --overwrite"),
        (["--ar_model", str(official("ar_tiny"))], "--ar_model samples a class: pass --class_id"),
        (["--ar_model", str(official("ar_tiny")), "--class_id", "5", "--overwrite"],
         r"--class_id must be in [0, 4]"),
        (["--fp_model", str(official("ar_fp_tiny"))], "--fp_model is for --frame_prediction"),
        (["--fp", "--fp_model", str(official("ar_fp_tiny")), "--num_frames", "20"],
         "give exactly one of --context and --ar_model"),
        (["--fp", "--fp_model", str(official("ar_tiny")), "--ar_model", str(official("ar_tiny")), "--class_id", "1",
          "--num_frames", "20"], "is a class-conditional model; pass it as --ar_model"),
        (["--ar_model", str(official("ar_fp_tiny")), "--class_id", "1"],
         "is a frame-prediction model; pass it as --fp_model"),
    ]
    for extra, message in bad:
        assert main(_args(out, *extra)) == 1, extra
        assert message in capsys.readouterr().err, extra
    assert "(default: 1.25)" in " ".join(_help("generate").split())


def _help(command: str) -> str:
    from larp.cli import build_parser

    parser = build_parser([command])
    sub = next(a for a in parser._actions if hasattr(a, "choices") and a.choices and command in a.choices)
    return sub.choices[command].format_help()


def test_too_many_videos_are_refused_before_sampling(tmp_path, capsys, monkeypatch):
    """100,000 clips of 8 frames of 32x32 at once need ~9.8 GB: refused by the memory budget, before any
    token is sampled; a raised budget is the deliberate way past it."""
    import larp.sample.generate_cli as generate_cli

    monkeypatch.setattr(generate_cli, "generate", lambda *a, **k: pytest.fail("sampled"))
    argv = _args(tmp_path / "many", "--ar_model", str(official("ar_tiny")), "--class_id", "1", "--num_videos",
                 "100000")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "100000 video(s) of 8 frames of 32x32" in err[0] and "--max_memory_mb" in err[0], err
    assert not (tmp_path / "many").exists() or not any((tmp_path / "many").glob("*.mp4"))
