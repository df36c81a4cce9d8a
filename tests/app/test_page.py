"""The page's handlers (no Gradio needed): results as the page shows them, every error as a status line."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from larp.app import core
from larp.app.page import Handlers
from larp.videos import VideoTokens


def _no_progress(fraction: float, text: str) -> None:
    pass


def test_reconstruct_returns_video_token_file_and_summary(models, clip_file, tmp_path):
    video, tokens_file, status = Handlers(models, tmp_path).reconstruct(str(clip_file), False, _no_progress)
    assert video.endswith("clip_reconstruction.mp4") and video.startswith(str(tmp_path / "request-"))
    assert VideoTokens.load(tokens_file).num_frames == 20
    assert status.startswith("PSNR: ") and "192 tokens" in status


def test_errors_become_the_status_line_naming_the_upload_not_its_temporary_path(models, bad_file, tmp_path):
    h = Handlers(models, tmp_path)
    video, tokens_file, status = h.reconstruct(str(bad_file), False, _no_progress)
    assert video is None and tokens_file is None
    assert status.startswith("**Error:** cannot read video notes.mp4: ") and str(bad_file.parent) not in status
    assert "\n" not in status and "Traceback" not in status
    assert h.reconstruct(None, False, _no_progress)[-1] == ("**Error:** no video given: upload one (or pick a demo "
                                                            "clip) first")
    assert h.generate(None, 3.0, 1.0, 0, 1, _no_progress) == (None, "**Error:** choose a class first")
    assert h.generate(0, 3.0, 1.0, 1.5, 1, _no_progress) == (None, "**Error:** the seed must be a whole number >= 0, "
                                                                   "got 1.5")
    assert h.continue_clip(str(bad_file), 3, 1.0, 0, _no_progress)[-1].startswith("**Error:** cannot read video "
                                                                                  "notes.mp4")


def test_a_bug_shows_one_line_and_logs_its_traceback(models, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(core, "generate_clips", broken)
    _, status = Handlers(models, tmp_path).generate(0, 3.0, 1.0, 0, 1, _no_progress)
    assert status == "**Error:** internal error (KeyError: 'oops'); the traceback is in the server's log"
    assert "Traceback" in capsys.readouterr().err


def test_generate_and_continue(models, clip_file, tmp_path):
    h = Handlers(models, tmp_path)
    video, status = h.generate(2, 1.0, 1.0, 3.0, 2.0, _no_progress)  # numbers arrive as floats from the page
    assert video.endswith("class2_seed3.mp4") and status.startswith("2 samples of green_triangle_down in ")
    video, status = h.continue_clip(str(clip_file), 5.0, 1.0, 0, _no_progress)
    assert video.endswith("clip_continued.mp4") and status.startswith("frames 1-5 of the upload")


def test_old_request_folders_are_removed(models, tmp_path):
    import os

    h = Handlers(models, tmp_path)
    old = tmp_path / "request-old"
    old.mkdir()
    os.utime(old, (0, 0))
    kept = h._request_dir()
    assert not old.exists() and kept.is_dir()


def test_build_page_lays_out_the_three_tabs(models, tmp_path):
    gr = pytest.importorskip("gradio", reason="the page needs the app extra: pip install -e '.[app]'")
    from larp.app.page import build_page

    page = build_page(models, tmp_path)
    assert isinstance(page, gr.Blocks)
    ids = {c.get("props", {}).get("elem_id") for c in page.config["components"]}
    assert {"recon-input", "recon-output", "recon-status", "recon-tokens", "gen-class", "gen-output",
            "fp-input", "fp-output"} <= ids
    def sliders(built):
        return [(c["props"]["label"].split(" (")[0], c["props"]["value"]) for c in built.config["components"]
                if c.get("type") == "slider" and c["props"]["label"].startswith(("Guidance", "Temperature"))]

    # Generate's guidance and temperature start at the models' sampling settings; Continue's temperature at 1.
    start = models.sampling
    assert sliders(page) == [("Guidance", start.cfg_scale), ("Temperature", start.temperature), ("Temperature", 1.0)]
    tuned = dataclasses.replace(models, sampling=core.SamplingSettings(cfg_scale=1.5, temperature=0.5))
    assert sliders(build_page(tuned, tmp_path / "t")) == [("Guidance", 1.5), ("Temperature", 0.5), ("Temperature", 1.0)]
    only_tokenizer = core.AppModels(models.tokenizer, "t")
    texts = [c.get("props", {}).get("value") for c in build_page(only_tokenizer, tmp_path / "b").config["components"]]
    assert "No class-conditional model is loaded: start `larp app` with `--ar_model`." in texts


def test_demo_clips_are_offered_for_the_demos_models_only(models, tmp_path):
    pytest.importorskip("gradio", reason="the page needs the app extra: pip install -e '.[app]'")
    from larp.app.page import build_page

    def labels(built):
        return [c.get("props", {}).get("label") for c in built.config["components"]]

    assert "Demo clips (synthetic)" not in labels(build_page(dataclasses.replace(models, synthetic=False), tmp_path / "a"))
    assert "Demo clips (synthetic)" in labels(build_page(dataclasses.replace(models, synthetic=True), tmp_path / "d"))


def test_uploads_are_limited_kept_in_the_work_folder_and_removed_on_exit(models, monkeypatch, tmp_path):
    import gradio as gr

    from larp.app import page as page_mod

    monkeypatch.setattr(page_mod.tempfile, "tempdir", str(tmp_path))  # where the work folder is made
    seen = {}

    def fake_launch(self, **kwargs):
        seen.update(kwargs, cache=self.GRADIO_CACHE)
        Path(self.GRADIO_CACHE, "upload.mp4").parent.mkdir(parents=True, exist_ok=True)
        Path(self.GRADIO_CACHE, "upload.mp4").write_bytes(b"an upload")

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    page_mod.launch(models, max_upload_mb=7)
    assert seen["max_file_size"] == "7mb"
    assert seen["share"] is False and seen["quiet"] is True  # no share link, and no banner suggesting one
    assert Path(seen["cache"]).parent.parent == tmp_path  # tmp_path/larp-app-*/uploads, not /tmp/gradio
    assert list(tmp_path.iterdir()) == []  # the uploads went with the work folder
    assert "GRADIO_TEMP_DIR" not in os.environ
