"""`larp app`: serve the page on this machine. Light at import (argparse only): the models and Gradio load
when the command runs."""

from __future__ import annotations

import argparse
import importlib.util
import signal
from pathlib import Path

from larp.utils.cli import add_device, add_option, add_tokenizer, port_number, positive_int
from larp.utils.errors import LarpError

MAX_FRAMES = 128  # larp.app.core.MAX_FRAMES, repeated so that building the parser imports no torch
MAX_UPLOAD_MB = 100  # larp.app.page.MAX_UPLOAD_MB (the same reason)

DESCRIPTION = """\
A local web page (Gradio) to see the tokenizer and the generator at work:
  Reconstruct  upload a video (or pick a demo clip): the original and its reconstruction side by side,
               the number of tokens, bits per pixel, PSNR, and the token file to download;
  Generate     clips of a class, with guidance, temperature and seed (needs an AR model);
  Continue     a frame-prediction continuation of an uploaded clip (needs --fp_model).
Without --tokenizer, the models of `make demo`: DEMO/tokenizer/model and DEMO/ar/model. Needs the app
extra: pip install -e '.[app]'."""


def resolve_model_paths(args: argparse.Namespace) -> tuple[str | Path, str | Path | None]:
    """(tokenizer, class-conditional model or None): the ones given, else the demo folder's."""
    if args.tokenizer is not None:
        return args.tokenizer, args.ar_model
    tokenizer, ar_model = args.demo / "tokenizer" / "model", args.demo / "ar" / "model"
    if not tokenizer.is_dir():
        raise LarpError(f"no tokenizer at {tokenizer}: run `make demo` first (or `larp demo --out {args.demo}`), "
                        "or pass --tokenizer with a model folder or Hugging Face repo id")
    if args.ar_model is not None:
        return tokenizer, args.ar_model
    return tokenizer, ar_model if ar_model.is_dir() else None


def check_gradio() -> None:
    """Gradio 6 or later: Gradio 5's page loads scripts from public CDNs, which this page must not."""
    if importlib.util.find_spec("gradio") is None:
        raise LarpError("the page needs Gradio, which is not installed: pip install -e '.[app]'")
    from importlib.metadata import version

    found = version("gradio")
    if int(found.split(".")[0]) < 6:
        raise LarpError(f"the page needs Gradio 6 (found {found}, whose page loads scripts from public CDNs): "
                        "pip install -e '.[app]'")


def run(args: argparse.Namespace) -> int:
    check_gradio()
    tokenizer, ar_model = resolve_model_paths(args)
    import torch

    from larp.app import core
    from larp.app.page import launch
    from larp.utils.device import resolve_device

    torch.set_num_threads(args.threads)
    models = core.load_models(tokenizer, ar_model, args.fp_model, device=resolve_device(args.device),
                              names=args.class_names)
    print(f"larp app: serving on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    signal.signal(signal.SIGTERM, _stop)  # `kill` stops the server as Ctrl+C does: its files are removed
    launch(models, host=args.host, port=args.port, max_frames=args.max_frames, max_upload_mb=args.max_upload_mb)
    return 0


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tokenizer(p, required=False, help="a tokenizer folder or Hugging Face repo id (default: the demo's, "
                                          "DEMO/tokenizer/model)")
    add_option(p, "ar_model", metavar="AR_MODEL", default=None,
               help="a class-conditional AR model folder or repo id for Generate (default: the demo's, "
                    "DEMO/ar/model, when --tokenizer is not given)")
    add_option(p, "fp_model", metavar="FP_MODEL", default=None,
               help="a frame-prediction AR model folder or repo id for Continue (default: none)")
    add_option(p, "demo", metavar="DEMO", type=Path, default=Path("runs/demo"),
               help="the `larp demo` folder whose models are used when --tokenizer is not given")
    add_option(p, "class_names", metavar="NAMES", default="auto",
               help="the classes' names: synthetic (the synthetic set's, e.g. red_square_horizontal), index "
                    "(class 0, class 1, ...), a text file with one name per line, or auto (synthetic for a "
                    "model inside a demo folder, else index)")
    add_option(p, "host", default="127.0.0.1", help="the address to serve on (127.0.0.1: this machine only)")
    add_option(p, "port", type=port_number, default=7860, help="the port to serve on")
    add_option(p, "max_upload_mb", type=positive_int, default=MAX_UPLOAD_MB,
               help="the largest upload the server accepts, in MB")
    add_option(p, "max_frames", type=positive_int, default=MAX_FRAMES,
               help="frames of an upload that are used (the first ones)")
    add_option(p, "threads", type=positive_int, default=1,
               help="CPU threads of torch: a request at the demo's sizes is small, and a second thread on a busy "
                    "CPU made it several times slower (docs/app.md)")
    add_device(p)
    p.set_defaults(func=run)
