"""Whole videos through a tokenizer: window and tile planning, blending, token files, and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from larp import LARPTokenizer, tokenizer_preset
from larp.cli import main
from larp.data.transforms import center_crop, pad_frames, resize_short_side
from larp.data.video_io import read_video, write_mp4
from larp.utils.errors import LarpError
from larp.videos.layout import blend_tiles, plan_layout, plan_tiles, plan_windows, tile_weights
from larp.videos.tokens import VideoTokens, VideoTokensError, decode_tokens, reconstruct_video, tokenize_video
from tests.conftest import official


class PixelCodec(nn.Module):
    """A stand-in tokenizer that is exact on uint8 pixels: token i is the i-th pixel value of the clip.

    It makes windowing, padding, tiling and blending checkable bit for bit without a trained model."""

    def __init__(self, frames: int = 4, size: int = 8) -> None:
        super().__init__()
        self.video_shape = (3, frames, size, size)
        self.num_tokens = 3 * frames * size * size
        self.codebook_size = 256
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device

    def encode(self, video: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        assert video.shape[1:] == self.video_shape and deterministic
        return (video * 255).round().long().flatten(1)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        return indices.float().view(-1, *self.video_shape) / 255


def random_frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def as_float(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return official("tokenizer_tiny")


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> LARPTokenizer:
    return LARPTokenizer.from_pretrained(tiny_dir)


# ------------------------------------------------------------------------------------------- planning


def test_plan_windows_cuts_consecutive_windows_and_counts_real_frames_of_the_last():
    assert plan_windows(40, 8) == [(0, 8), (8, 8), (16, 8), (24, 8), (32, 8)]
    assert plan_windows(37, 8) == [(0, 8), (8, 8), (16, 8), (24, 8), (32, 5)]
    assert plan_windows(3, 8) == [(0, 3)]
    with pytest.raises(ValueError, match="at least one frame"):
        plan_windows(0, 8)


def test_plan_tiles_exact_starts_and_coverage():
    assert plan_tiles(100, 32, 8) == [0, 23, 45, 68]
    assert plan_tiles(60, 32, 8) == [0, 14, 28]
    assert plan_tiles(33, 32, 8) == [0, 1]
    assert plan_tiles(32, 32, 8) == [0]
    assert plan_tiles(20, 32, 8) == [0]  # smaller than a tile: the caller pads
    for length in range(33, 300):
        starts = plan_tiles(length, 32, 8)
        gaps = np.diff(starts)
        assert starts[0] == 0 and starts[-1] + 32 == length
        assert (gaps > 0).all() and (gaps <= 24).all(), (length, starts)
        assert len(plan_tiles(length, 32, 8)) == -(-(length - 32) // 24) + 1  # the fewest that fit
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 32\)"):
        plan_tiles(100, 32, 32)


def test_tile_weights_ramp_linearly_and_stay_positive():
    expected = torch.tensor([1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3])
    assert torch.allclose(tile_weights(6, 2), expected)
    assert torch.equal(tile_weights(5, 0), torch.ones(5))


def test_blend_tiles_reproduces_an_image_from_its_crops_and_keeps_constants():
    image = torch.rand(3, 2, 60, 100)
    positions = [(t, x) for t in plan_tiles(60, 32, 8) for x in plan_tiles(100, 32, 8)]
    crops = torch.stack([image[..., t : t + 32, x : x + 32] for t, x in positions])
    assert torch.equal(blend_tiles(crops, positions, (60, 100), 8), image)
    constant = torch.full((len(positions), 3, 2, 32, 32), 0.3)
    assert torch.equal(blend_tiles(constant, positions, (60, 100), 8), torch.full((3, 2, 60, 100), 0.3))
    # A tile hanging over the border is clipped (the padded-frame case).
    assert torch.equal(blend_tiles(crops[:1], [(-5, -7)], (20, 20), 8), crops[0, ..., 5:25, 7:27])
    with pytest.raises(ValueError, match="uncovered"):
        blend_tiles(crops[:1], [(0, 0)], (60, 100), 8)


def test_plan_layout_records_crop_box_and_output_size():
    crop = plan_layout(60, 100, 32, "crop")
    assert (crop.resized_size, crop.crop_box, crop.tiles, crop.output_size) == (
        (32, 53), (0, 10, 32, 32), ((0, 10),), (60, 60))
    cover = plan_layout(100, 60, 32, "cover", overlap=8)
    assert (cover.resized_size, cover.tiles, cover.output_size) == ((53, 32), ((0, 0), (21, 0)), (100, 60))
    tile = plan_layout(60, 100, 32, "tile", overlap=8)
    assert len(tile.tiles) == 12 and tile.output_size == (60, 100)
    with pytest.raises(ValueError, match="overlap applies to the cover and tile layouts, not crop"):
        plan_layout(60, 100, 32, "crop", overlap=8)
    with pytest.raises(ValueError, match="spatial must be one of crop, cover, tile"):
        plan_layout(60, 100, 32, "stretch")


# ------------------------------------------------------------------- exact pipeline (stand-in model)


@pytest.mark.parametrize("shape", [(37, 12, 20), (37, 20, 12), (5, 5, 6), (9, 8, 8)])
def test_tiled_reconstruction_is_exact_through_an_identity_codec(shape):
    frames = random_frames(*shape)
    recon, psnr = reconstruct_video(PixelCodec(), frames, tile=True, overlap=2, batch_size=3)
    assert torch.equal(recon, as_float(frames))
    assert psnr == 100.0  # the meter's cap for identical videos


def test_cover_and_crop_layouts_are_exact_when_no_resize_is_needed():
    codec = PixelCodec()
    frames = random_frames(11, 8, 21)  # shorter side already the model's 8
    recon, _ = reconstruct_video(codec, frames)  # cover
    assert torch.equal(recon, as_float(frames))
    tokens = tokenize_video(codec, frames, spatial="crop")  # the centre 8x8
    assert tokens.tokens.shape == (3, codec.num_tokens) and tokens.layout.crop_box == (0, 6, 8, 8)
    assert torch.equal(decode_tokens(codec, tokens), as_float(frames)[..., 6:14])


def test_float_input_and_tensor_device_follow_the_input():
    frames = random_frames(6, 8, 10)
    video = as_float(frames)
    recon, _ = reconstruct_video(PixelCodec(), video, tile=True)
    assert recon.device == video.device and torch.equal(recon, video)
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got values in \[0, 255\]"):
        tokenize_video(PixelCodec(), video * 255)
    with pytest.raises(ValueError, match=r"uint8 frames \(T, H, W, 3\) or a float video"):
        tokenize_video(PixelCodec(), frames[..., 0])


# ---------------------------------------------------------------------------- the official tiny model


def test_forty_frames_of_100x60_reconstruct_to_exactly_that_shape(tiny):
    frames = random_frames(40, 60, 100)
    for tile in (False, True):
        recon, psnr = reconstruct_video(tiny, frames, tile=tile, batch_size=16)
        assert recon.shape == (3, 40, 60, 100) and 0 <= recon.min() and recon.max() <= 1
        assert psnr == pytest.approx(-10 * np.log10(((recon - as_float(frames)) ** 2).mean().item()), abs=1e-4)
    recon, _ = reconstruct_video(tiny, random_frames(40, 100, 60), tile=True, batch_size=16)
    assert recon.shape == (3, 40, 100, 60)


def test_windows_pad_the_last_and_trim_it_back(tiny):
    frames = random_frames(37, 60, 100)
    tokens = tokenize_video(tiny, frames, spatial="crop", fps=12.5)
    assert tokens.tokens.shape == (5, 32) and tokens.tokens.dtype == np.int64
    assert tokens.windows[-1] == (32, 5)
    assert tokens.output_shape == (3, 37, 60, 60)
    assert decode_tokens(tiny, tokens).shape == (3, 37, 60, 60)
    # The last row holds the deterministic codes of the last 5 frames padded with copies of the 37th.
    last = pad_frames(center_crop(resize_short_side(as_float(frames[32:]), 32), 32), 8)
    assert torch.equal(torch.from_numpy(tokens.tokens[-1:]), tiny.encode(last[None], deterministic=True))


def test_token_file_round_trip_is_exact(tiny, tmp_path: Path):
    frames = random_frames(19, 40, 70)
    for spatial in ("crop", "cover", "tile"):
        overlap = None if spatial == "crop" else 6
        tokens = tokenize_video(tiny, frames, spatial=spatial, overlap=overlap, fps=29.97, tokenizer_id="some/model")
        loaded = VideoTokens.load(tokens.save(tmp_path / f"{spatial}.npz"))
        assert loaded == tokens and loaded.layout == tokens.layout
        assert (loaded.tokenizer, loaded.fps, loaded.num_frames, loaded.frames_per_window) == (
            "some/model", 29.97, 19, 8)
        assert torch.equal(decode_tokens(tiny, loaded), decode_tokens(tiny, tokens))
        with np.load(tmp_path / f"{spatial}.npz", allow_pickle=False) as data:
            assert json.loads(str(data["metadata"][0]))["spatial"] == spatial


def test_bad_token_files_raise_clear_errors(tmp_path: Path):
    with pytest.raises(VideoTokensError, match="missing.npz: file not found"):
        VideoTokens.load(tmp_path / "missing.npz")
    text = tmp_path / "text.npz"
    text.write_text("not an archive\n")
    with pytest.raises(VideoTokensError, match="text.npz: not a readable .npz archive"):
        VideoTokens.load(text)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(VideoTokensError, match=r"expected the arrays \['metadata', 'tokens'\].*found arrays \['x'\]"):
        VideoTokens.load(tmp_path / "other.npz")
    np.savez(tmp_path / "foreign.npz", tokens=np.zeros((1, 4), np.int64), metadata=np.array(['{"format": "x"}']))
    with pytest.raises(VideoTokensError, match="not a larp token file"):
        VideoTokens.load(tmp_path / "foreign.npz")
    good = tokenize_video(PixelCodec(), random_frames(5, 8, 8))
    meta = good.metadata()
    meta["num_frames"] = 50  # needs 13 windows, the file holds 2
    np.savez(tmp_path / "short.npz", tokens=good.tokens, metadata=np.array([json.dumps(meta)]))
    with pytest.raises(VideoTokensError, match=r"need 13 token rows .*found int64 \(2, 768\)"):
        VideoTokens.load(tmp_path / "short.npz")
    meta["num_frames"], meta["crop_box"] = 5, [0, 0, 9, 9]
    np.savez(tmp_path / "box.npz", tokens=good.tokens, metadata=np.array([json.dumps(meta)]))
    with pytest.raises(VideoTokensError, match="recorded layout .* is not the one larp plans for 8x8"):
        VideoTokens.load(tmp_path / "box.npz")
    del meta["fps"]
    np.savez(tmp_path / "keys.npz", tokens=good.tokens, metadata=np.array([json.dumps(meta)]))
    with pytest.raises(VideoTokensError, match=r"missing \['fps'\]"):
        VideoTokens.load(tmp_path / "keys.npz")


def test_tokens_from_another_tokenizer_are_refused(tiny):
    tokens = tokenize_video(PixelCodec(), random_frames(5, 8, 8))
    with pytest.raises(ValueError, match="different tokenizer .*N=768 tokens, K=256 codes.*N=32 tokens, K=128"):
        decode_tokens(tiny, tokens)


def test_dtype_and_device_choices(tiny):
    frames = random_frames(8, 32, 32)
    full, _ = reconstruct_video(tiny, frames)
    half, _ = reconstruct_video(tiny, frames, dtype=torch.bfloat16)
    assert half.dtype == torch.float32 and not torch.equal(half, full)  # autocast really ran in bfloat16
    assert (half - full).abs().max() < 0.1
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16"):
        tokenize_video(tiny, frames, dtype=torch.float64)
    with pytest.raises(ValueError, match="the tokenizer is on cpu, not meta"):
        tokenize_video(tiny, frames, device="meta")


# ----------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_mp4(tmp_path / "clip.mp4", random_frames(20, 60, 100), fps=12)


def test_cli_tokenize_then_decode_inverts_tokenize(tiny, tiny_dir: Path, clip: Path, tmp_path: Path, capsys):
    local = Path(shutil.copytree(tiny_dir, tmp_path / "models" / "tok"))
    out = tmp_path / "clip.npz"
    assert main(["tokenize", str(clip), "--tokenizer", str(local), "-o", str(out), "--device", "cpu",
                 "--spatial", "crop"]) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}: 3 windows x 1 tiles x 32 tokens (20 frames, 100x60, 12 fps)" in captured.out
    assert "encode clip.mp4: 100%" in captured.err and "3/3" in captured.err  # the progress bar
    tokens = VideoTokens.load(out)
    assert (tokens.tokenizer, tokens.fps, tokens.num_frames) == ("./models/tok", 12.0, 20)  # relative
    frames, _ = read_video(clip)
    assert tokens == tokenize_video(tiny, frames, fps=12.0, tokenizer_id="./models/tok", spatial="crop")

    # The token file and its tokenizer move together.
    moved = Path(shutil.move(tmp_path / "models", tmp_path / "elsewhere" / "models"))
    out = out.rename(moved.parent / out.name)
    video = tmp_path / "decoded.mp4"
    assert main(["decode", str(out), "-o", str(video), "--batch-size", "2"]) == 0  # tokenizer from the file
    assert "decode: 100%" in capsys.readouterr().err
    decoded, fps = read_video(video)
    assert decoded.shape == (20, 60, 60, 3) and fps == 12
    # The same frames as the library's decode, through the same (deterministic) encoder.
    reference, _ = read_video(write_mp4(tmp_path / "reference.mp4", decode_tokens(tiny, tokens), fps=12))
    assert np.array_equal(decoded, reference)
    # An existing output needs --overwrite; a tokenizer that is gone names --tokenizer.
    assert main(["decode", str(out), "-o", str(video)]) == 1
    assert capsys.readouterr().err == f"larp decode: error: {video} exists already (file); pass --overwrite to replace it\n"
    shutil.rmtree(moved)
    assert main(["decode", str(out), "-o", str(video), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"larp decode: error: {out} was made with the tokenizer ./models/tok (relative to the "
                          f"token file: {moved / 'tok'}), which is not there; pass --tokenizer")
    assert main(["decode", str(out), "-o", str(video), "--overwrite", "--tokenizer", str(tiny_dir)]) == 0


def test_cli_tokenize_records_a_hub_id_as_given(tmp_path: Path):
    from larp.videos.commands import recorded_tokenizer, resolve_recorded_tokenizer

    token_file = tmp_path / "a" / "clip.npz"
    assert recorded_tokenizer("hywang66/LARP-L-long-tokenizer", token_file) == "hywang66/LARP-L-long-tokenizer"
    assert resolve_recorded_tokenizer("hywang66/LARP-L-long-tokenizer", token_file) == "hywang66/LARP-L-long-tokenizer"
    (tmp_path / "m").mkdir()
    token_file.parent.mkdir()
    assert recorded_tokenizer(str(tmp_path / "m"), token_file) == "../m"
    assert resolve_recorded_tokenizer("../m", token_file) == str(tmp_path / "a" / "../m")
    with pytest.raises(LarpError, match="does not name its tokenizer; pass --tokenizer"):
        resolve_recorded_tokenizer("", token_file)


def test_the_api_and_the_cli_share_their_defaults():
    import inspect

    from larp.cli import build_parser

    args = build_parser().parse_args(["tokenize", "clip.mp4", "--tokenizer", "t", "-o", "clip.npz"])
    api = inspect.signature(tokenize_video).parameters
    assert (api["spatial"].default, api["batch_size"].default) == (args.spatial, args.batch_size) == ("cover", 8)
    args = build_parser().parse_args(["reconstruct", "clip.mp4", "--tokenizer", "t", "-o", "r.mp4"])
    api = inspect.signature(reconstruct_video).parameters
    assert (api["tile"].default, api["batch_size"].default) == (args.spatial == "tile", args.batch_size)
    args = build_parser().parse_args(["decode", "clip.npz", "-o", "d.mp4"])
    assert inspect.signature(decode_tokens).parameters["batch_size"].default == args.batch_size


def test_cli_outputs_need_overwrite(tiny_dir: Path, clip: Path, tmp_path: Path, capsys):
    out = tmp_path / "t.npz"
    out.write_bytes(b"old")
    argv = ["tokenize", str(clip), "--tokenizer", str(tiny_dir), "-o", str(out), "--device", "cpu"]
    assert main(argv) == 1
    assert capsys.readouterr().err == f"larp tokenize: error: {out} exist(s) already; pass --overwrite to replace\n"
    assert out.read_bytes() == b"old"
    assert main([*argv, "--overwrite"]) == 0
    assert VideoTokens.load(out).layout.spatial == "cover"  # the default layout, as in reconstruct
    recon = tmp_path / "r.mp4"
    recon.write_bytes(b"old")
    assert main(["reconstruct", str(clip), "--tokenizer", str(tiny_dir), "-o", str(recon)]) == 1
    assert "pass --overwrite" in capsys.readouterr().err and recon.read_bytes() == b"old"


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--batch_size", "0", "expected an integer >= 1, got '0'"),
    ("--overlap", "-2", "expected an integer >= 0, got '-2'"),
    ("--spatial", "crop", "invalid choice: 'crop'"),
])
def test_cli_checks_its_numbers(tiny_dir: Path, clip: Path, tmp_path: Path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exc:
        main(["reconstruct", str(clip), "--tokenizer", str(tiny_dir), "-o", str(tmp_path / "r.mp4"), option, value])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_tokenize_several_videos_into_a_folder(tiny_dir: Path, clip: Path, tmp_path: Path):
    other = write_mp4(tmp_path / "other.mp4", random_frames(9, 40, 40), fps=8)
    folder = tmp_path / "tokens"
    assert main(["tokenize", str(clip), str(other), "--tokenizer", str(tiny_dir), "-o", str(folder),
                 "--spatial", "tile", "--device", "cpu"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["clip.npz", "other.npz"]
    assert VideoTokens.load(folder / "other.npz").output_shape == (3, 9, 40, 40)


def test_cli_reconstruct_keeps_the_size_and_prints_the_psnr(tiny, tiny_dir: Path, clip: Path, tmp_path: Path,
                                                           capsys):
    frames, _ = read_video(clip)
    for flags in ([], ["--tile"]):
        out = tmp_path / f"recon{len(flags)}.mp4"
        assert main(["reconstruct", str(clip), "--tokenizer", str(tiny_dir), "-o", str(out),
                     "--device", "cpu", *flags]) == 0
        _, psnr = reconstruct_video(tiny, frames, tile=bool(flags))
        assert f"PSNR: {psnr:.2f} dB" in capsys.readouterr().out
        recon, fps = read_video(out)
        assert recon.shape == (20, 60, 100, 3) and fps == 12
        assert not (out.parent / f".{out.stem}.partial.mp4").exists()


def test_cli_unreadable_inputs_give_one_error_line(tiny_dir: Path, clip: Path, tmp_path: Path, capsys):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is text, not a video\n")
    cases = [
        (["reconstruct", str(tmp_path / "missing.mp4")], "larp reconstruct: error: cannot read video",
         "missing.mp4: file not found"),
        (["reconstruct", str(fake)], "larp reconstruct: error: cannot read video", "notes.mp4: truncated, corrupt"),
        (["tokenize", str(fake)], "larp tokenize: error: cannot read video", "notes.mp4"),
        (["decode", str(fake)], "larp decode: error: cannot use token file", "not a readable .npz archive"),
    ]
    for argv, prefix, cause in cases:
        out = "x.npz" if argv[0] == "tokenize" else "x.mp4"
        assert main([*argv, "--tokenizer", str(tiny_dir), "-o", str(tmp_path / out), "--device", "cpu"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(prefix) and cause in err, err
    # Several videos: the readable ones are still tokenized, the exit status reports the failure.
    folder = tmp_path / "tokens"
    assert main(["tokenize", str(clip), str(fake), "--tokenizer", str(tiny_dir), "-o", str(folder),
                 "--device", "cpu"]) == 1
    assert [p.name for p in folder.iterdir()] == ["clip.npz"]
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("larp")]  # not the bars
    assert len(err) == 1 and err[0].startswith(f"larp tokenize: error: cannot read video {fake}: truncated")
    # A bad tokenizer path is named too.
    assert main(["reconstruct", str(clip), "--tokenizer", str(tmp_path / "nope"), "-o", str(tmp_path / "r.mp4")]) == 1
    assert "larp reconstruct: error:" in capsys.readouterr().err


def test_cli_decode_refuses_tokens_of_another_tokenizer(tiny_dir: Path, clip: Path, tmp_path: Path, capsys):
    other_dir = LARPTokenizer(tokenizer_preset("larp-sanity-32")).save_pretrained(tmp_path / "other")
    tokens = tmp_path / "t.npz"
    assert main(["tokenize", str(clip), "--tokenizer", str(tiny_dir), "-o", str(tokens), "--device", "cpu"]) == 0
    assert main(["decode", str(tokens), "--tokenizer", str(other_dir), "-o", str(tmp_path / "d.mp4")]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("larp decode: error: the tokens were made by a different tokenizer")
    assert "N=32 tokens, K=128 codes" in err and "N=16 tokens, K=1024 codes" in err
    assert not (tmp_path / "d.mp4").exists()
