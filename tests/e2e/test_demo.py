"""The demo end to end in its shortened form: every stage runs, the report and what it links exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from larp.cli import main
from larp.demo.pipeline import AR_RECIPE, TOKENIZER_RECIPE, Demo, DemoConfig
from larp.train.config import ARTrainConfig, TokenizerTrainConfig, load_recipe
from larp.utils.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_shortened_demo_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("val_psnr_db", "val_ssim", "codebook_usage", "sample_class_accuracy", "recon_class_accuracy"):
        assert isinstance(metrics[key], float), key
    assert 0 <= metrics["sample_class_accuracy"] <= 1 and metrics["chance_accuracy"] == 0.1
    html = (out / "report.html").read_text()
    links = re.findall(r"href='([^']+)'", html)
    assert len(links) >= 12  # recon gif + png, 10 class gifs, curves
    for link in links:
        assert (out / link).is_file(), link
    assert html.count("data:image/") == len(links)  # every picture is also embedded
    assert len(list((out / "samples").glob("*.mp4"))) == 10
    # A second run resumes: every stage is skipped, nothing is recomputed.
    before = (out / "demo.json").read_text()
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    assert "done earlier, skipped" in capsys.readouterr().err or (out / "demo.json").read_text() == before
    assert json.loads((out / "demo.json").read_text()) == json.loads(before)


def test_demo_refuses_a_folder_with_other_settings(tmp_path):
    Demo(tmp_path / "d", DemoConfig.smoke())
    with pytest.raises(ConfigError, match="other settings.*quick.*--overwrite"):
        Demo(tmp_path / "d", DemoConfig())
    Demo(tmp_path / "d", DemoConfig(), overwrite=True)  # --overwrite starts again
    # A folder from another version of the recipes (here: an older preset) is not resumed either.
    state = json.loads((tmp_path / "d" / "demo.json").read_text())
    state["recipes"]["tokenizer"]["model_config"]["bottleneck"]["args"]["regularizer"]["args"]["codebook_size"] = 1024
    (tmp_path / "d" / "demo.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="other training recipes \\(tokenizer: an earlier version.*--overwrite"):
        Demo(tmp_path / "d", DemoConfig())
    del state["recipes"]  # a folder written before recipes were recorded
    (tmp_path / "d" / "demo.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="other training recipes \\(tokenizer and ar:"):
        Demo(tmp_path / "d", DemoConfig())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="holds no demo"):
        Demo(tmp_path / "other", DemoConfig())


def test_shipped_cpu_recipes_equal_the_demo_recipes():
    paths = ["data.train_csv", "data.val_csv", "data.token_cache", "tokenizer.path", "run.out_dir"]
    for cls, name, overrides in ((TokenizerTrainConfig, "tiny_synthetic.yaml", TOKENIZER_RECIPE),
                                 (ARTrainConfig, "tiny_synthetic_ar.yaml", AR_RECIPE)):
        shipped = load_recipe(cls, REPO / "configs" / name)
        demo = load_recipe(cls, None, overrides)
        for key in paths:
            if hasattr(demo, key.split(".")[0]):
                head, attr = key.split(".")
                setattr(getattr(shipped, head), attr, getattr(getattr(demo, head), attr))
        assert shipped == demo, name
