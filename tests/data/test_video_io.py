"""Reading (every mode, every container used, every bad input) and writing videos with PyAV."""

from __future__ import annotations

import hashlib
import pickle

import av
import numpy as np
import pytest
import torch
from PIL import Image

from larp.data import video_io
from larp.data.video_io import (
    VideoReadError,
    probe_video,
    read_clip,
    read_video,
    to_tensor,
    to_uint8,
    write_gif,
    write_mp4,
    write_png_grid,
)

# ----------------------------------------------------------------------------------------------- reading


def test_probe_reports_header_values(videos):
    path = videos.indexed("a.mp4", 40, fps=25)
    info = probe_video(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (40, 25.0, 80, 32)
    assert info.duration == pytest.approx(1.6)


def test_consecutive_clip_from_given_start(videos):
    path = videos.indexed("a.mp4", 60)
    clip = read_clip(path, 8, start=20)
    assert clip.dtype == np.uint8 and clip.shape == (8, 32, 80, 3)
    assert videos.ids(clip) == list(range(20, 28))


def test_consecutive_clip_with_stride(videos):
    path = videos.indexed("a.mp4", 60)
    assert videos.ids(read_clip(path, 5, start=3, stride=3)) == [3, 6, 9, 12, 15]


def test_random_start_comes_from_rng_and_fits(videos):
    path = videos.indexed("a.mp4", 30)
    starts = []
    for seed in range(6):
        ids = videos.ids(read_clip(path, 8, rng=np.random.default_rng(seed)))
        assert ids == list(range(ids[0], ids[0] + 8)) and 0 <= ids[0] <= 22
        again = videos.ids(read_clip(path, 8, rng=np.random.default_rng(seed)))
        assert again == ids  # same generator state, same clip
        starts.append(ids[0])
    assert len(set(starts)) > 1


def test_uniform_mode_spreads_over_whole_video(videos):
    path = videos.indexed("a.mp4", 100)
    ids = videos.ids(read_clip(path, 8, mode="uniform"))
    assert ids == np.linspace(0, 99, 8).round().astype(int).tolist()
    with pytest.raises(ValueError, match="uniform"):
        read_clip(path, 8, start=3, mode="uniform")


def test_short_video_padded_by_repeating_last_frame(videos):
    path = videos.indexed("short.mp4", 5)
    assert videos.ids(read_clip(path, 8, start=0)) == [0, 1, 2, 3, 4, 4, 4, 4]
    assert videos.ids(read_clip(path, 8, rng=np.random.default_rng(0))) == [0, 1, 2, 3, 4, 4, 4, 4]
    assert videos.ids(read_clip(path, 8, mode="uniform")) == [0, 1, 2, 3, 4, 4, 4, 4]
    long = videos.indexed("long.mp4", 30)
    assert videos.ids(read_clip(long, 6, start=27)) == [27, 28, 29, 29, 29, 29]


def test_start_outside_video_is_rejected(videos):
    path = videos.indexed("a.mp4", 10)
    with pytest.raises(ValueError, match="start 10 is outside the video's 10 frames"):
        read_clip(path, 4, start=10)


def test_clip_seeks_to_keyframe_instead_of_decoding_from_start(videos):
    path = videos.indexed("long.mp4", 300, options={"g": "25", "keyint_min": "25", "sc_threshold": "0"})
    with av.open(str(path)) as container:
        info, stream = video_io._probe(container, path)
        first_index, _ = next(video_io._Decoder(container, stream, info.fps, path).frames(260))
    assert 235 <= first_index <= 260  # decoding starts at the key frame before 260, not at frame 0
    for start in (0, 24, 25, 26, 149, 260, 292):
        assert videos.ids(read_clip(path, 8, start=start)) == list(range(start, start + 8))
    assert videos.ids(read_clip(path, 6, mode="uniform")) == [0, 60, 120, 179, 239, 299]
    # One key frame for the whole file: seeking lands on frame 0 and decodes on to the target.
    single_gop = videos.indexed("gop.mp4", 120, options={"g": "300", "sc_threshold": "0"})
    assert videos.ids(read_clip(single_gop, 4, start=100)) == [100, 101, 102, 103]
    assert videos.ids(read_clip(single_gop, 4, mode="uniform")) == [0, 40, 79, 119]


def test_b_frames_and_mpeg4_avi(videos):
    # H.264 with B-frames reorders frames; MPEG-4 Part 2 in AVI is the UCF-101 format.
    h264 = videos.indexed("b.mp4", 50, options={"bf": "3", "g": "12"})
    avi = videos.indexed("v.avi", 50, codec="mpeg4", options={"qscale": "2", "g": "12"})
    for path in (h264, avi):
        assert probe_video(path).num_frames == 50
        assert videos.ids(read_clip(path, 10, start=31)) == list(range(31, 41))
        frames, fps = read_video(path)
        assert videos.ids(frames) == list(range(50)) and fps == 25.0


def test_read_video_returns_every_frame(videos):
    path = videos.indexed("a.mp4", 23, fps=12)
    frames, fps = read_video(path)
    assert frames.shape == (23, 32, 80, 3) and fps == 12.0
    assert videos.ids(frames) == list(range(23))


def test_grayscale_odd_sized_and_headerless_count_decode_to_rgb(videos):
    # FFV1 grey in Matroska: no frame count in the header (counted from packets), odd 33x35 frames.
    grey = np.repeat((np.arange(12, dtype=np.uint8) * 20)[:, None, None, None], 3, axis=-1)
    grey = np.broadcast_to(grey, (12, 35, 33, 3)).copy()
    path = videos.write("g.mkv", grey, codec="ffv1", pix_fmt="gray", fps=10)
    info = probe_video(path)
    assert (info.num_frames, info.width, info.height) == (12, 33, 35)
    clip = read_clip(path, 4, start=5)
    assert clip.shape == (4, 35, 33, 3)
    assert clip[:, 10, 10].tolist() == [[100] * 3, [120] * 3, [140] * 3, [160] * 3]  # lossless grey -> RGB
    # Odd-sized colour H.264 (yuv444p allows odd sizes).
    colour = np.zeros((6, 21, 37, 3), np.uint8)
    colour[..., 0] = 200
    odd = videos.write("odd.mp4", colour, pix_fmt="yuv444p", options={"crf": "0"})
    frames, _ = read_video(odd)
    assert frames.shape == (6, 21, 37, 3)
    assert np.abs(frames.astype(int) - colour).max() <= 3


# ------------------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(VideoReadError, match=r"nothere\.mp4: file not found"):
        read_clip(tmp_path / "nothere.mp4", 4)


def test_directory_and_empty_file(tmp_path):
    with pytest.raises(VideoReadError, match="is a directory"):
        probe_video(tmp_path)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoReadError, match=r"empty\.mp4: empty file \(0 bytes\)"):
        read_video(tmp_path / "empty.mp4")


def test_corrupt_and_text_files(tmp_path):
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "notes.txt").write_text("not a video\n" * 20)
    for name in ("noise.mp4", "notes.txt"):
        with pytest.raises(VideoReadError, match=rf"{name}: truncated, corrupt or not a video container"):
            read_clip(tmp_path / name, 4)
    assert issubclass(VideoReadError, ValueError)
    err = pickle.loads(pickle.dumps(VideoReadError(tmp_path / "x.mp4", "empty file (0 bytes)")))
    assert str(
        err
    ) == f"cannot read video {tmp_path / 'x.mp4'}: empty file (0 bytes)" and err.cause.startswith("empty")


def test_truncated_files(videos):
    data = videos.index_frames(60)
    # Default mp4: the index (moov) is written last, so a cut file cannot be opened.
    full = videos.write("full.mp4", data).read_bytes()
    cut = videos.root / "cut.mp4"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(VideoReadError, match=r"cut\.mp4: truncated, corrupt"):
        probe_video(cut)
    # Fast-start mp4: the header survives and declares 60 frames, the later frames are gone.
    fast = videos.write("fast.mp4", data, container_options={"movflags": "faststart"}).read_bytes()
    cut_fast = videos.root / "cut_fast.mp4"
    cut_fast.write_bytes(fast[: len(fast) * 3 // 4])  # past the header and the first frames
    assert probe_video(cut_fast).num_frames == 60
    assert videos.ids(read_clip(cut_fast, 4, start=0)) == [0, 1, 2, 3]  # the intact part still reads
    with pytest.raises(VideoReadError, match=r"cut_fast\.mp4: truncated or corrupt"):
        read_clip(cut_fast, 4, start=50)
    with pytest.raises(VideoReadError, match=r"cut_fast\.mp4: truncated or corrupt"):
        read_video(cut_fast)


def test_no_video_stream(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(VideoReadError, match=r"sound\.wav: no video stream \(streams found: audio\)"):
        read_clip(path, 4)


def test_zero_frames(tmp_path):
    # A Matroska file with a video stream that never received a frame (audio only was muxed).
    path = tmp_path / "zero.mkv"
    with av.open(str(path), "w") as container:
        video = container.add_stream("ffv1", rate=25)
        video.width, video.height = 32, 32
        audio = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    with pytest.raises(VideoReadError, match=r"zero\.mkv: the video stream holds zero frames"):
        read_clip(path, 4)


def test_bad_arguments(videos):
    path = videos.indexed("a.mp4", 10)
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        read_clip(path, 0)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        read_clip(path, 4, stride=0)
    with pytest.raises(ValueError, match="mode must be"):
        read_clip(path, 4, mode="random")


# ------------------------------------------------------------------------------------ layout + writing


def test_tensor_round_trip_and_clamping():
    frames = np.random.default_rng(0).integers(0, 256, (4, 6, 7, 3), dtype=np.uint8)
    video = to_tensor(frames)
    assert video.shape == (3, 4, 6, 7) and video.dtype == torch.float32
    assert video.min() >= 0 and video.max() <= 1
    assert video[1, 2, 3, 4] == pytest.approx(frames[2, 3, 4, 1] / 255)
    np.testing.assert_array_equal(to_uint8(video), frames)
    batch = torch.stack([video, video]) * 2 - 0.5  # values outside [0, 1] are clamped
    out = to_uint8(batch)
    assert out.shape == (2, 4, 6, 7, 3) and out.min() == 0 and out.max() == 255
    with pytest.raises(ValueError, match=r"expected uint8 frames \(T, H, W, 3\)"):
        to_tensor(frames.astype(np.float32))
    with pytest.raises(ValueError, match=r"expected a float video \(3, T, H, W\)"):
        to_uint8(torch.zeros(4, 6, 7, 3))  # frames layout, not channels first


def test_write_mp4_round_trip_odd_size_and_batch(tmp_path):
    rng = np.random.default_rng(0)
    video = torch.from_numpy(rng.uniform(0.2, 0.8, (3, 1, 1, 1)).astype(np.float32)).expand(3, 5, 9, 11)
    path = write_mp4(tmp_path / "out" / "one.mp4", video, fps=10)
    frames, fps = read_video(path)
    assert fps == 10.0
    assert frames.shape == (5, 10, 12, 3)  # odd sizes grow by one repeated row/column for yuv420p
    assert np.abs(frames.astype(int) - to_uint8(video)[0, 0, 0].astype(int)).max() <= 4
    batch = torch.stack([video, 1 - video])
    frames, _ = read_video(write_mp4(tmp_path / "two.mp4", batch))
    assert frames.shape == (5, 10, 2 * 11 + 2, 3)  # side by side with a 2-pixel gap
    assert np.abs(frames[:, 4, 15].astype(int) - to_uint8(1 - video)[0, 0, 0].astype(int)).max() <= 4


def test_the_same_frames_give_the_same_bytes_on_every_encode(tmp_path):
    # A detailed clip: with x264's macroblock-tree on, about one encode in ten of these very frames gave other
    # bytes and other decoded pixels (one thread or several), which made sample files and the synthetic
    # dataset differ between identical runs.
    from scipy.ndimage import gaussian_filter

    noise = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3)).astype(np.float32)
    clip = gaussian_filter(noise, (1, 3, 3, 0)).clip(0, 255).astype(np.uint8)
    for threads in (1, None):
        digests = {hashlib.sha256(write_mp4(tmp_path / f"{i}.mp4", clip, threads=threads).read_bytes()).digest()
                   for i in range(150)}
        assert len(digests) == 1, f"threads={threads}: {len(digests)} different files from 150 encodes"


def test_write_gif(tmp_path):
    clips = np.zeros((2, 3, 8, 10, 3), np.uint8)
    clips[:, 1] = 255
    path = write_gif(tmp_path / "a.gif", clips, fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.size == (2 * 10 + 2, 8)
        assert gif.info["duration"] == 200 and gif.info["loop"] == 0
        gif.seek(1)
        assert np.asarray(gif.convert("RGB"))[4, 4].tolist() == [255, 255, 255]


def test_write_png_grid_rows_are_clips_columns_are_time(tmp_path):
    rng = np.random.default_rng(1)
    videos = torch.from_numpy(rng.random((3, 3, 4, 6, 5), dtype=np.float32))
    path = write_png_grid(tmp_path / "grid.png", videos)
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape == (3 * 6 + 2 * 2, 4 * 5 + 3 * 2, 3)
    expected = to_uint8(videos)
    # Clip 2, time 3 sits in row 2, column 3 (lossless PNG).
    np.testing.assert_array_equal(grid[2 * 8 : 2 * 8 + 6, 3 * 7 : 3 * 7 + 5], expected[2, 3])
    assert (grid[6:8] == 255).all()  # white gap between rows


# ------------------------------------------------------------------------------------- bounded reading
def _wide_mp4(path, width: int = 8208, height: int = 16, frames: int = 2):
    """A tiny H.264 file whose frames are wider than larp reads (1.6 KB on disk)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8),
                                                                   format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_frames_larger_than_the_limit_are_refused_from_the_header(tmp_path, monkeypatch):
    path = _wide_mp4(tmp_path / "wide.mp4")
    assert path.stat().st_size < 10_000
    monkeypatch.setattr(video_io, "_Decoder", lambda *a: pytest.fail("decoding started"))
    for read in (probe_video, read_video, lambda p: read_clip(p, 2), video_io.VideoReader):
        with pytest.raises(VideoReadError, match="declares frames of 8208x16; larp reads frames of at most 8192"):
            read(path)


def test_video_reader_streams_in_chunks_of_the_asked_size(videos):
    path = videos.indexed("long.mp4", 37)
    with video_io.VideoReader(path) as reader:
        assert reader.info.num_frames == 37
        chunks = list(reader.chunks(8))
    assert [c.shape[0] for c in chunks] == [8, 8, 8, 8, 5]
    assert videos.ids(np.concatenate(chunks)) == list(range(37))
    with pytest.raises(ValueError, match="chunk size must be >= 1"):
        next(video_io.VideoReader(path).chunks(0))


def test_read_video_refuses_more_than_max_bytes(videos, monkeypatch):
    path = videos.indexed("long.mp4", 37)  # 37 frames of 80x32: 284,160 bytes
    monkeypatch.setattr(video_io, "_Decoder", lambda *a: pytest.fail("decoding started"))
    with pytest.raises(VideoReadError, match=r"37 frames of 80x32 take 284,160 bytes, more than the 100,000 "
                                             r"bytes read_video holds in memory; stream it with VideoReader"):
        read_video(path, max_bytes=100_000)


def test_read_video_stops_when_a_file_holds_more_frames_than_declared(videos, monkeypatch):
    path = videos.indexed("long.mp4", 37)
    real_probe = video_io._probe

    def understated(container, p):  # a header claiming 10 frames for a stream of 37
        info, stream = real_probe(container, p)
        return video_io.VideoInfo(10, info.fps, info.width, info.height), stream

    monkeypatch.setattr(video_io, "_probe", understated)
    with pytest.raises(VideoReadError, match="more than 11 frames"):
        read_video(path, max_bytes=11 * 80 * 32 * 3)


# ------------------------------------------------------------------------------------- atomic writing
@pytest.mark.parametrize("fps", [0, -1, 1e12, float("nan"), float("inf"), True])
def test_writers_refuse_absurd_frame_rates(tmp_path, fps):
    clip = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"frame rate must be a number in \(0, 1000\]"):
        write_mp4(tmp_path / "a.mp4", clip, fps=fps)
    with pytest.raises(ValueError, match=r"frame rate must be a number in \(0, 1000\]"):
        write_gif(tmp_path / "a.gif", clip, fps=fps)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_mp4_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_mp4(tmp_path / "out.mp4", np.zeros((3, 8, 8, 3), np.uint8))
    before = path.read_bytes()
    real_mux = av.container.OutputContainer.mux
    calls = []

    def full_disk(self, packets):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real_mux(self, packets)

    monkeypatch.setattr(av.container.OutputContainer, "mux", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        write_mp4(path, np.full((30, 8, 8, 3), 200, np.uint8))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temporary file left
    monkeypatch.undo()
    with pytest.raises(ValueError, match="frame size changed"):
        with video_io.MP4Writer(tmp_path / "new.mp4") as writer:
            writer.write(np.zeros((8, 8, 3), np.uint8))
            writer.write(np.zeros((8, 10, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_failed_gif_and_png_writes_leave_nothing(tmp_path, monkeypatch):
    def full_disk(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"GIF89a")  # part of a file, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    clip = np.zeros((2, 8, 8, 3), np.uint8)
    for write in (write_gif, write_png_grid):
        with pytest.raises(OSError, match="No space left on device"):
            write(tmp_path / "x.out", clip)
    assert list(tmp_path.iterdir()) == []


def test_written_files_honour_the_umask(tmp_path):
    import os

    clip = np.zeros((2, 8, 8, 3), np.uint8)
    old = os.umask(0o027)
    try:
        paths = [write_mp4(tmp_path / "a.mp4", clip), write_gif(tmp_path / "a.gif", clip),
                 write_png_grid(tmp_path / "a.png", clip)]
    finally:
        os.umask(old)
    assert [p.stat().st_mode & 0o777 for p in paths] == [0o640] * 3
    assert read_video(paths[0])[0].shape == (2, 8, 8, 3)


def test_a_worker_s_video_error_reaches_the_main_process_as_the_same_error(tmp_path):
    from torch.utils.data import DataLoader

    from larp.data.datasets import VideoClipDataset
    from larp.data.prepare import VideoRow

    bad = tmp_path / "bad: name.mp4"
    bad.write_bytes(b"not a video")
    dataset = VideoClipDataset([VideoRow(id="b", path=str(bad), action="", label=0)], num_frames=2, size=8)
    with pytest.raises(video_io.VideoReadError) as in_process:
        dataset[0]
    with pytest.raises(video_io.VideoReadError) as in_worker:
        next(iter(DataLoader(dataset, batch_size=1, num_workers=1)))
    assert (in_worker.value.path, in_worker.value.cause) == (in_process.value.path, in_process.value.cause)
    assert str(in_worker.value) == str(in_process.value)


def test_other_worker_errors_print_their_own_message_on_one_line():
    from torch.utils.data import DataLoader

    from larp.data.datasets import TooManyBadVideosError
    from larp.utils.errors import one_line

    class Failing(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int):
            raise TooManyBadVideosError("3 of 4 videos are unreadable")

    with pytest.raises(TooManyBadVideosError) as caught:
        next(iter(DataLoader(Failing(), num_workers=1)))
    assert one_line(caught.value) == "3 of 4 videos are unreadable"
