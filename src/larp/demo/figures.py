"""The demo's last stage: metrics.json, the pictures and report.html from the earlier stages' results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from larp.demo.report import comparison_picture, plot_panels, read_jsonl, series, spread_frames, write_report

# metrics.json: (key, where it comes from (stage, field), one plain line on what it means).
METRICS: list[tuple[str, tuple[str, str], str]] = [
    ("val_psnr_db", ("recon", "val_psnr"), "reconstruction PSNR over whole frames, mean over validation clips "
                                           "(mostly background: the object covers ~5% of the frame)"),
    ("val_ssim", ("recon", "val_ssim"), "structural similarity of the reconstructions (1 = identical)"),
    ("recon_object_iou", ("recon", "recon_object_iou"), "overlap (IoU) of the object's pixels in a clip and in its "
                                                        "reconstruction, all frames (1 = same place and shape)"),
    ("recon_object_psnr_db", ("recon", "recon_object_psnr"), "PSNR on the real object's pixels only"),
    ("recon_background_psnr_db", ("recon", "recon_background_psnr"), "PSNR on all other pixels"),
    ("recon_strict_accuracy", ("recon", "recon_strict_accuracy"), "reconstructions whose colour, shape and motion "
                                                                  "the analytic classifier reads as the class's"),
    ("recon_shape_accuracy", ("recon", "recon_shape_accuracy"), "reconstructions with the right shape"),
    ("recon_class_accuracy", ("recon", "recon_class_accuracy"), "lenient class (colour and motion only, as in "
                                                                "earlier versions of this demo)"),
    ("recon_coherent_fraction", ("recon", "recon_coherent_fraction"), "reconstructions showing one object of "
                                                                      "stable size moving without jumps"),
    ("recon_sfvd", ("recon", "recon_sfvd"), "sFVD of the reconstructions against the validation clips (like "
                                            "rFVD; 0 = the same distribution of analytic features)"),
    ("real_strict_accuracy", ("recon", "real_strict_accuracy"), "the classifier on the real validation clips: "
                                                                "the ceiling of the strict accuracies"),
    ("sfvd_real_floor", ("recon", "sfvd_real_floor"), "sFVD of 200 real training clips against the validation "
                                                      "clips: what a perfect generator would score"),
    ("sample_strict_accuracy", ("score", "strict_accuracy"), "samples whose colour, shape and motion are those of "
                                                             "the class they were asked for (chance 10%)"),
    ("sample_colour_accuracy", ("score", "colour_accuracy"), "samples with the class's colour"),
    ("sample_shape_accuracy", ("score", "shape_accuracy"), "samples with the class's shape"),
    ("sample_motion_accuracy", ("score", "motion_accuracy"), "samples moving the class's way"),
    ("sample_class_accuracy", ("score", "class_accuracy"), "lenient class of the samples (colour and motion)"),
    ("sample_coherent_fraction", ("score", "coherent_fraction"), "samples showing exactly one object in nearly "
                                                                 "every frame, of stable area, moving without jumps"),
    ("sample_empty_fraction", ("score", "empty_fraction"), "samples showing no object in half of their frames "
                                                            "or more (background only)"),
    ("sample_sfvd", ("score", "sfvd"), "sFVD of the samples against the validation clips (like gFVD)"),
    ("sample_path_spread", ("score", "path_spread"), "how far apart two samples of one class start and end, over "
                                                     "the frame size: low when they all take one path"),
    ("real_path_spread", ("recon", "real_path_spread"), "the same for the real validation clips"),
    ("samples", ("score", "count"), "generated clips scored"),
    ("chance_accuracy", ("score", "chance"), "a random guess among the classes"),
    ("codebook_usage", ("recon", "codebook_usage"), "fraction of the codebook the validation clips use"),
    ("codebook_perplexity", ("recon", "codebook_perplexity"), "effective number of codes in use"),
]


def _curves(out: Path, pics: Path, codebook_size: int) -> list[Path]:
    tok = read_jsonl(out / "tokenizer" / "metrics.jsonl")
    ar = read_jsonl(out / "ar" / "metrics.jsonl")
    mse_db = (lambda v: -10 * math.log10(max(v, 1e-10)))  # noqa: E731
    # The batch MSE: `train/mse` when the pixel losses are weighted, otherwise the L2 loss itself.
    mse_key = "train/mse" if any("train/mse" in row for row in tok) else "train/l2"
    tok_panels = [
        ("tokenizer: reconstruction", "PSNR (dB)", [
            ("training batches (their MSE)", *series(tok, mse_key, mse_db)),
            ("validation clips", *series(tok, "val/psnr"))]),
        ("tokenizer: prior (next-token cross-entropy)", "nats", [
            ("training", *series(tok, "train/prior_ce")),
            (f"uniform over {codebook_size:,} codes", *_flat(series(tok, "train/prior_ce")[0],
                                                                math.log(codebook_size)))]),
    ]
    ar_panels = [("AR model: next-token cross-entropy", "nats", [
        ("training", *series(ar, "train/loss")), ("validation", *series(ar, "val/loss"))])]
    made = [plot_panels(tok_panels, pics / "tokenizer_curves.png", "tokenizer training"),
            plot_panels(ar_panels, pics / "ar_curves.png", "AR model training")]
    return [p for p in made if p is not None]


def _flat(steps: list[float], value: float) -> tuple[list[float], list[float]]:
    return ([steps[0], steps[-1]], [value, value]) if steps else ([], [])


def _video(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, H, W) in [0, 1]."""
    return frames.permute(3, 0, 1, 2).float() / 255


def write_demo_report(demo: Any) -> dict[str, Any]:
    """Write metrics.json, the pictures and report.html of a demo whose other stages are done."""
    from safetensors.torch import load_file

    from larp.data.synthetic import synthetic_classes
    from larp.data.video_write import write_gif, write_png_grid
    from larp.utils.files import write_json

    done, cfg, out = demo.state["done"], demo.cfg, demo.out
    metrics: dict[str, Any] = {key: done[stage][field] for key, (stage, field), _ in METRICS}
    metrics.update({
        "tokenizer_train_seconds": done["tokenizer"]["seconds"], "ar_train_seconds": done["ar"]["seconds"],
        "total_seconds": sum(v.get("seconds", 0.0) for v in done.values()),
        "total_cpu_seconds": sum(v.get("cpu_seconds", 0.0) for v in done.values()), "quick": cfg.quick,
        "device": cfg.device})
    write_json(out / "metrics.json", metrics)

    pics = out / "pictures"
    samples = load_file(str(out / "samples" / "samples.safetensors"))
    recon = load_file(done["recon"]["file"])
    labels = samples["labels"]
    specs = synthetic_classes(cfg.classes)
    score = done["score"]
    per_class, class_gifs = [], []
    for k, spec in enumerate(specs):
        mine = samples["videos"][labels == k][:3]
        clips = [("real", _video(recon["real"][k])), ("reconstruction", _video(recon["recon"][k]))]
        clips += [(f"sample {i + 1}", _video(v)) for i, v in enumerate(mine)]
        strict = _get(score["per_class_strict"], k)
        coherent = _get(score["per_class_coherent"], k)
        title = (f"class {k}: {spec.colour} {spec.shape}, {spec.motion}; samples of this class strictly right "
                 f"{strict:.0%}, coherent {coherent:.0%}")
        per_class.append((title, comparison_picture(pics / f"class{k}.png", title, clips,
                                                    spread_frames(4, cfg.frames))))
        row = np.stack([np.repeat(np.repeat(recon["real"][k].numpy(), 2, 1), 2, 2),
                        np.repeat(np.repeat(recon["recon"][k].numpy(), 2, 1), 2, 2)]
                       + [np.repeat(np.repeat(v.numpy(), 2, 1), 2, 2) for v in mine])
        class_gifs.append((f"class {k} ({spec.name}): real, reconstruction, samples; pixels x2",
                           write_gif(pics / f"class{k}.gif", row)))
    firsts = torch.stack([samples["videos"][labels == k][0] for k in range(cfg.classes)])
    samples_png = write_png_grid(pics / "samples.png", firsts.numpy())
    curves = _curves(out, pics, _codebook_size(demo))
    table = [(key, metrics[key], explanation) for key, _, explanation in METRICS]
    table += [("total_seconds", metrics["total_seconds"], "wall time of all stages of this run (resumed runs: "
                                                          "of the stages run then)")]
    sections = [
        ("Per class: a validation clip, its reconstruction and three samples (frames 0, 5, 10, 15; pixels x4)",
         per_class),
        ("The same, animated (pixels x2)", class_gifs),
        (f"Samples: the first of each class (rows: classes 0-{cfg.classes - 1}; columns: frames)",
         [("samples.png", samples_png)]),
        ("Training curves", [(p.stem, p) for p in curves]),
    ]
    notes = [f"A LARP tokenizer (holistic queries, stochastic VQ, AR prior) and a class-conditional AR model trained "
             f"from scratch on this machine; {metrics['samples']} samples ({cfg.samples_per_class} per class, "
             f"guidance {cfg.cfg_scale:g}, temperature {cfg.temperature:g}"
             + (f", top-k {cfg.top_k}" if cfg.top_k else "") + f") and {done['recon']['val_clips']} validation "
             "clips scored by the dataset's analytic classifier (docs/demo.md says how each figure is computed)."]
    banner = ("A quick run (larp demo --quick): a few steps per stage, to check that every stage runs. Its "
              "figures and pictures mean nothing; run `larp demo` without --quick for the real demo.") if cfg.quick else ""
    title = "larp demo: LARP on synthetic videos" + (" (quick run)" if cfg.quick else "")
    report = write_report(out / "report.html", title, table, sections, notes, banner)
    return {"report": str(report)}


def _get(table: dict[Any, float], k: int) -> float:
    """A per-class entry whether the keys survived a JSON round trip (strings) or not."""
    return table.get(k, table.get(str(k), float("nan")))


def _codebook_size(demo: Any) -> int:
    config = json.loads((Path(demo.state["done"]["tokenizer"]["model"]) / "config.json").read_text())
    return int(config["bottleneck"]["args"]["regularizer"]["args"]["codebook_size"])


# The reference figures that the AR model's card shows beside its samples' figures.
_REAL = ("real_strict_accuracy", "sfvd_real_floor", "real_path_spread")


def write_demo_cards(demo: Any) -> None:
    """Rewrite the model cards of the demo's tokenizer and AR model with their training runs and the demo's
    figures from metrics.json: the reconstructions' for the tokenizer, the samples' for the AR model."""
    from larp.models.hub import write_card
    from larp.train.export import run_card_fields

    metrics = json.loads((demo.out / "metrics.json").read_text())
    cfg = demo.cfg
    smoke = " (a --quick smoke run: the figures mean nothing)" if cfg.quick else ""
    recon = {k: metrics[k] for k, (stage, _), _ in METRICS if stage == "recon" and k not in _REAL}
    samples = {k: metrics[k] for k, (stage, _), _ in METRICS if stage == "score" or k in _REAL}
    done = demo.state["done"]
    tok, ar = Path(done["tokenizer"]["model"]), Path(done["ar"]["model"])
    clips = done["recon"]["val_clips"]
    write_card(tok, "LARPTokenizer", **run_card_fields(tok.parent, 1), evaluations={
        f"larp demo: its {clips} validation clips reconstructed (metrics.json){smoke}": recon})
    write_card(ar, "LARPAR", **run_card_fields(ar.parent, 1), evaluations={
        f"larp demo: {metrics['samples']} samples, guidance {cfg.cfg_scale:g}, temperature "
        f"{cfg.temperature:g} (metrics.json){smoke}": samples})
