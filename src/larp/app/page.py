"""The app's Gradio page: three tabs (Reconstruct, Generate, Continue) over `larp.app.core`.

`Handlers` turns page inputs into page outputs and every user error into a message in the tab's status box
(never a traceback); it does not import Gradio, so it is tested without it. `build_page` and `launch` need
the `app` extra. The page loads nothing from the internet: system fonts, no share link, no analytics."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from larp.app import core
from larp.utils.errors import USER_ERRORS, one_line

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before Gradio is imported: no calls home

MAX_UPLOAD_MB = 100  # larger uploads are refused by the server (a clip of 128 frames is a few MB)
KEEP_SECONDS = 3600  # a request's files are deleted an hour later (the page has copied them by then)
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
SYSTEM_MONO = ["ui-monospace", "monospace"]


def error_text(exc: BaseException) -> str:
    return f"**Error:** {one_line(exc)}"


class Handlers:
    """The page's actions: each returns the values of its tab's outputs, the last one the status text."""

    def __init__(self, models: core.AppModels, work_dir: Path, max_frames: int = core.MAX_FRAMES) -> None:
        self.models, self.work_dir, self.max_frames = models, Path(work_dir), max_frames
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def _request_dir(self) -> Path:
        now = time.time()
        for old in self.work_dir.glob("request-*"):
            if now - old.stat().st_mtime > KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix="request-", dir=self.work_dir))

    def _guard(self, work: Callable[[], tuple[Any, ...]], blanks: int, upload: str | None = None) -> tuple[Any, ...]:
        """Run `work`; a user error becomes the status text, anything else too but with its traceback logged.
        Messages name an upload by its file name, not by the server's temporary path."""
        try:
            return work()
        except USER_ERRORS as exc:
            text = error_text(exc)
        except Exception as exc:  # a bug: the page still gets one line, the server log the traceback
            traceback.print_exc(file=sys.stderr)
            text = (f"**Error:** internal error ({type(exc).__name__}: {one_line(exc)}); the traceback is in the "
                    "server's log")
        if upload:
            text = text.replace(str(upload), Path(upload).name)
        return (None,) * blanks + (text,)

    def reconstruct(self, video: str | None, tile: bool, progress: core.Progress) -> tuple[Any, ...]:
        def work() -> tuple[Any, ...]:
            r = core.reconstruct(self.models, video, self._request_dir(), tile=bool(tile),
                                 max_frames=self.max_frames, progress=progress)
            return str(r.video), str(r.tokens_file), r.summary()

        return self._guard(work, 2, video)

    def generate(self, class_index: int | None, cfg_scale: float, temperature: float, seed: float,
                 num_samples: float, progress: core.Progress) -> tuple[Any, ...]:
        def work() -> tuple[Any, ...]:
            if class_index is None:
                raise ValueError("choose a class first")
            s = core.generate_clips(self.models, int(class_index), self._request_dir(), cfg_scale=float(cfg_scale),
                                    temperature=float(temperature), seed=seed, num_samples=int(num_samples),
                                    progress=progress)
            return str(s.video), s.summary()

        return self._guard(work, 1)

    def continue_clip(self, video: str | None, context_frames: float, temperature: float, seed: float,
                      progress: core.Progress) -> tuple[Any, ...]:
        def work() -> tuple[Any, ...]:
            c = core.continue_clip(self.models, video, self._request_dir(), context_frames=int(context_frames),
                                   temperature=float(temperature), seed=seed, progress=progress)
            return str(c.video), c.summary()

        return self._guard(work, 1, video)


def _models_text(models: core.AppModels) -> str:
    _, t, s, _ = models.tokenizer.video_shape
    lines = [f"Tokenizer `{models.tokenizer_id}`: clips of {t} frames of {s}x{s} → {models.tokenizer.num_tokens} "
             f"tokens of {models.tokenizer.codebook_size:,} codes."]
    if models.ar is not None:
        lines.append(f"Generator `{models.ar_id}`: {models.ar.config.num_classes} classes.")
    if models.fp is not None:
        lines.append(f"Frame prediction `{models.fp_id}`.")
    return "  \n".join(lines)


def build_page(models: core.AppModels, work_dir: Path, max_frames: int = core.MAX_FRAMES) -> Any:
    """The gr.Blocks of the page (not launched)."""
    import gradio as gr

    h = Handlers(models, work_dir, max_frames)
    _, t, _, _ = models.tokenizer.video_shape

    def on_reconstruct(video, tile, progress=gr.Progress()):  # noqa: B008 (Gradio's way to ask for progress)
        return h.reconstruct(video, tile, lambda f, text: progress(f, desc=text))

    def on_generate(class_index, cfg_scale, temperature, seed, num_samples, progress=gr.Progress()):  # noqa: B008
        return h.generate(class_index, cfg_scale, temperature, seed, num_samples,
                          lambda f, text: progress(f, desc=text))

    def on_continue(video, context_frames, temperature, seed, progress=gr.Progress()):  # noqa: B008
        return h.continue_clip(video, context_frames, temperature, seed, lambda f, text: progress(f, desc=text))

    with gr.Blocks(title="larp", analytics_enabled=False) as page:
        gr.Markdown("## larp: the LARP tokenizer and its video generator at work")
        gr.Markdown(_models_text(models), elem_id="models")
        with gr.Tabs():
            with gr.Tab("Reconstruct", id="reconstruct", elem_id="tab-reconstruct"):
                with gr.Row():
                    with gr.Column():
                        video_in = gr.Video(label="Video", sources=["upload"], height=320, elem_id="recon-input")
                        tile = gr.Checkbox(label="Tile the native resolution (more tokens, finer detail)")
                        go = gr.Button("Reconstruct", variant="primary", elem_id="recon-button")
                        if models.synthetic:  # the synthetic set's clips only for the demo's models
                            gr.Examples([[str(p)] for p in core.demo_clips(models, Path(work_dir) / "examples")],
                                        inputs=[video_in], label="Demo clips (synthetic)")
                    with gr.Column():
                        video_out = gr.Video(label="Original (left) and reconstruction (right)", interactive=False,
                                             autoplay=True, loop=True, elem_id="recon-output")
                        status = gr.Markdown(elem_id="recon-status")
                        tokens_out = gr.File(label="Token file (larp decode reads it)", interactive=False,
                                             elem_id="recon-tokens")
                go.click(on_reconstruct, [video_in, tile], [video_out, tokens_out, status])

            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                if models.ar is None:
                    gr.Markdown("No class-conditional model is loaded: start `larp app` with `--ar_model`.")
                else:
                    guided = models.ar.config.has_null_class
                    with gr.Row():
                        with gr.Column():
                            cls = gr.Dropdown([(n, k) for k, n in enumerate(models.class_names)], value=0,
                                              label="Class", elem_id="gen-class")
                            start = models.sampling
                            cfg = gr.Slider(1.0, 8.0, value=start.cfg_scale if guided else 1.0, step=0.05,
                                            interactive=guided, label="Guidance (classifier-free; 1 = none)")
                            temp = gr.Slider(0.0, 2.0, value=start.temperature, step=0.05,
                                             label="Temperature (0 = greedy)")
                            seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                            count = gr.Slider(1, core.MAX_SAMPLES, value=2, step=1, label="Samples")
                            gen = gr.Button("Generate", variant="primary", elem_id="gen-button")
                        with gr.Column():
                            gen_out = gr.Video(label="Generated clips", interactive=False, autoplay=True, loop=True,
                                               elem_id="gen-output")
                            gen_status = gr.Markdown(elem_id="gen-status")
                    gen.click(on_generate, [cls, cfg, temp, seed, count], [gen_out, gen_status])

            with gr.Tab("Continue", id="continue", elem_id="tab-continue"):
                if models.fp is None:
                    gr.Markdown("No frame-prediction model is loaded: start `larp app` with `--fp_model`.")
                else:
                    with gr.Row():
                        with gr.Column():
                            fp_in = gr.Video(label="Clip", sources=["upload"], height=320, elem_id="fp-input")
                            ctx = gr.Slider(1, t - 1, value=min(5, t - 1), step=1, label="Context frames")
                            fp_temp = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature (0 = greedy)")
                            fp_seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                            fp_go = gr.Button("Continue", variant="primary", elem_id="fp-button")
                        with gr.Column():
                            fp_out = gr.Video(label="The clip (left) and the model's continuation (right)",
                                              interactive=False, autoplay=True, loop=True, elem_id="fp-output")
                            fp_status = gr.Markdown(elem_id="fp-status")
                    fp_go.click(on_continue, [fp_in, ctx, fp_temp, fp_seed], [fp_out, fp_status])
    return page


def launch(models: core.AppModels, *, host: str = "127.0.0.1", port: int = 7860, max_frames: int = core.MAX_FRAMES,
           work_dir: Path | None = None, block: bool = True, max_upload_mb: int = MAX_UPLOAD_MB) -> Any:
    """Serve the page on http://host:port; returns the Blocks (already closed when `block`).

    Uploads larger than `max_upload_mb` are refused by the server; uploads are kept in the work folder (not
    the system's temporary folder, Gradio's default), which is removed when the server stops."""
    import gradio as gr

    folder = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="larp-app-"))
    saved = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "uploads")  # read when the page is built
    try:
        page = build_page(models, folder, max_frames)
    finally:
        if saved is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved
    page.queue(default_concurrency_limit=1)  # one request at a time: each uses the CPU fully
    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=SYSTEM_MONO)  # the default one fetches web fonts
    try:
        # quiet: Gradio's own banner would suggest `share=True`, which larp does not offer (the command
        # prints its address itself).
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False, quiet=True,
                    mcp_server=False, theme=theme, allowed_paths=[str(folder)], footer_links=[],
                    prevent_thread_lock=not block, max_file_size=f"{max_upload_mb}mb")
    finally:
        if block:
            page.close()
            if not work_dir:
                shutil.rmtree(folder, ignore_errors=True)
    return page
