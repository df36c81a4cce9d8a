"""The whole tiny pipeline: tokenizer -> token cache -> AR training -> guided sampling -> videos, FVD, report."""

from __future__ import annotations

import csv
import json
import warnings

import pytest
import torch

from larp import LARPTokenizer, tokenizer_preset
from larp.cli import main
from larp.data.synthetic import write_synthetic_dataset
from larp.eval import fvd
from larp.train.ar_task import ARTask
from larp.train.config import ARTrainConfig, load_recipe
from larp.train.run import train
from tests.eval.conftest import trust
from tests.sample.test_job import SmallStandIn


@pytest.mark.slow
def test_tokens_to_trained_ar_to_sampled_videos_with_fvd(tmp_path, monkeypatch):
    data = write_synthetic_dataset(tmp_path / "data", classes=4, clips_per_class=5, frames=16, size=32,
                                   val_fraction=0.2)
    torch.manual_seed(0)
    tok = LARPTokenizer(tokenizer_preset("larp-tiny"))
    torch.nn.init.normal_(tok.final_layer.linear.weight, std=0.05)
    tok_dir = tok.save_pretrained(tmp_path / "tokenizer")
    assert main(["tokenize-dataset", "--tokenizer", str(tok_dir), "--dataset_csv", str(data["train"]),
                 "--out", str(tmp_path / "tokens")]) == 0
    recipe = load_recipe(ARTrainConfig, None, [
        "model.preset=ar-tiny", "model.config.num_classes=4", f"tokenizer.path={tok_dir}",
        f"data.token_cache={tmp_path / 'tokens'}", f"data.val_csv={data['val']}", "data.num_frames=8",
        "data.size=32", "data.batch_size=4", "data.num_workers=0", "data.val_clips=4",
        f"run.out_dir={tmp_path / 'ar'}", "run.max_steps=4", "run.eval_every=4", "run.ckpt_every=4"])
    train(recipe, ARTask)

    detector = tmp_path / "i3d" / fvd.I3D_FILENAME
    detector.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(SmallStandIn().eval()), str(detector))
    trust(monkeypatch, detector)
    out = tmp_path / "samples"
    assert main(["sample", "--ar_model", str(tmp_path / "ar" / "model"), "--tokenizer", str(tok_dir),
                 "--dataset_csv", str(data["train"]), "--output_dir", str(out), "--i3d_path", str(detector),
                 "--num_samples", "8", "--sample_batch_size", "4", "--cfg_scale", "2.0", "--device", "cpu"]) == 0
    assert len(list((out / "samples").glob("*.mp4"))) == 8
    with (out / "fvd_report.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    result = json.loads((out / "fvd.json").read_text())
    real, fake = fvd.FeatureStats.load(out / "stats" / "real.npz"), fvd.FeatureStats.load(out / "stats" / "fake.npz")
    assert result["fvd"] == pytest.approx(fvd.fvd(real, fake)) and result["fvd"] > 0
