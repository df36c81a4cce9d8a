"""The demo end to end in its shortened form: every stage runs, the report and what it links exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from larp.cli import main
from larp.demo.pipeline import AR_RECIPE, TOKENIZER_RECIPE, Demo, DemoConfig, recipe_file, run_demo
from larp.models.card import format_value
from larp.utils.config import ConfigError
from larp.utils.outputs import FolderBusyError, NotOwnedError, exclusive_output

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_shortened_demo_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    # Strict JSON: an undefined figure is null, never NaN (which most JSON readers refuse).
    metrics = json.loads((out / "metrics.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"metrics.json holds {c}"))
    for key in ("val_psnr_db", "val_ssim", "codebook_usage", "recon_object_iou", "recon_object_psnr_db",
                "recon_strict_accuracy", "recon_sfvd", "sample_strict_accuracy", "sample_coherent_fraction",
                "sample_sfvd", "sfvd_real_floor", "real_strict_accuracy", "sample_class_accuracy"):
        assert isinstance(metrics[key], float), key
    assert 0 <= metrics["sample_strict_accuracy"] <= metrics["sample_class_accuracy"] + 0.2
    assert metrics["chance_accuracy"] == 0.1 and metrics["samples"] == 10
    assert metrics["real_strict_accuracy"] >= 0.9  # real clips: the classifier's ceiling
    html = (out / "report.html").read_text()
    assert "(quick run)</h1>" in html and "class='banner'" in html and "figures and pictures mean nothing" in html
    for key in ("recon_object_iou", "sample_coherent_fraction", "sample_sfvd"):
        assert f"<code>{key}</code>" in html  # every figure has a row (with its explanation)
    links = re.findall(r"href='([^']+)'", html)
    assert len(links) == 10 + 10 + 1 + 2  # per-class pictures and animations, samples.png, two curves
    for link in links:
        assert (out / link).is_file(), link
    assert html.count("data:image/") == len(links)  # every picture is also embedded
    assert "pictures/samples.png" in links and "pictures/class9.png" in links
    assert len(list((out / "samples").glob("*.mp4"))) == 10
    # The models' cards carry their training runs and the demo's figures.
    tok_card, ar_card = ((out / name / "model" / "README.md").read_text() for name in ("tokenizer", "ar"))
    for card in (tok_card, ar_card):
        assert "Not recorded" not in card and "smoke run: the figures mean nothing" in card
        assert ModelCard(card).data.license == "mit" and "Recipe SHA-256: " in card
    assert f"| recon_object_iou | {format_value(metrics['recon_object_iou'])} |" in tok_card
    assert f"| sample_sfvd | {format_value(metrics['sample_sfvd'])} |" in ar_card and "recon_sfvd" not in ar_card
    assert "| val/psnr |" in tok_card and "| val/loss |" in ar_card
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


def test_demo_recipes_are_the_shipped_package_files_and_configs_links_to_them():
    for name in (TOKENIZER_RECIPE, AR_RECIPE):
        shipped = recipe_file(name)
        assert shipped.parent.name == "configs" and shipped.parent.parent.name == "larp"
        assert (REPO / "configs" / name).samefile(shipped)  # one copy: the top-level file is a link
    demo = Demo.__new__(Demo)
    demo.cfg = DemoConfig(seed=3)
    tok, ar = demo.tokenizer_recipe(), demo.ar_recipe()
    assert tok.run.seed == 3 and tok.model.preset == "larp-synthetic-64-clip" and tok.run.max_steps > 100
    assert ar.run.seed == 3 and ar.model_config().num_classes == 10 and ar.model.codebook_init
    assert ar.model_config().vocab_size == tok.model_config().codebook_size  # the recipe alone pairs them too
    quick = Demo.__new__(Demo)
    quick.cfg = DemoConfig.smoke()
    assert quick.tokenizer_recipe().run.max_steps == 4 and quick.ar_recipe().run.max_steps == 4


def test_sample_files_honour_the_umask(tmp_path):
    import os

    import torch

    from larp import LARPAR, LARPTokenizer, ar_preset, tokenizer_preset

    torch.manual_seed(0)
    tok = LARPTokenizer(tokenizer_preset("larp-tiny")).save_pretrained(tmp_path / "tok")
    ar = LARPAR(ar_preset("ar-tiny")).save_pretrained(tmp_path / "ar")
    demo = Demo(tmp_path / "demo", DemoConfig(classes=2, samples_per_class=1, frames=8, size=32))
    demo.state.setdefault("done", {}).update({"tokenizer": {"model": str(tok)}, "ar": {"model": str(ar)}})
    old = os.umask(0o002)
    try:
        demo.stage_samples()
    finally:
        os.umask(old)
    files = list((tmp_path / "demo" / "samples").iterdir())
    assert any(f.suffix == ".safetensors" for f in files)
    assert all(f.stat().st_mode & 0o777 == 0o664 for f in files), files


def test_demo_overwrite_deletes_only_what_a_demo_wrote(tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "thesis.txt").write_text("precious\n")
    Demo(out, DemoConfig.smoke(), overwrite=True)  # writes beside the user's file, deletes nothing of it
    (out / "data").mkdir()
    (out / "data" / "train.csv").write_text("id,path\n")
    Demo(out, DemoConfig(), overwrite=True)  # other settings: the demo's files go
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["demo.json", "thesis.txt"]
    assert (out / "thesis.txt").read_text() == "precious\n"
    assert json.loads((out / "demo.json").read_text())["config"]["quick"] is False
    # a folder of the user's with a name the demo writes is never taken over
    mine = tmp_path / "mine"
    (mine / "samples").mkdir(parents=True)
    (mine / "samples" / "a.mp4").write_bytes(b"mine")
    with pytest.raises(NotOwnedError, match=r"samples exist\(s\) and larp did not write it"):
        Demo(mine, DemoConfig.smoke(), overwrite=True)
    assert (mine / "samples" / "a.mp4").read_bytes() == b"mine"


def test_a_second_demo_into_the_same_folder_is_refused(tmp_path):
    with exclusive_output(tmp_path / "d", "demo"):
        with pytest.raises(FolderBusyError, match="is being written by larp demo"):
            run_demo(tmp_path / "d", DemoConfig.smoke())


def test_presets_resolve_to_their_recipes():
    from larp.demo.pipeline import DEMO_PRESETS, demo_config

    cpu, gpu = (Demo.__new__(Demo) for _ in range(2))
    cpu.cfg, gpu.cfg = demo_config("cpu", seed=2), demo_config("gpu", seed=2)
    tok_cpu, tok_gpu = cpu.tokenizer_recipe(), gpu.tokenizer_recipe()
    assert (tok_cpu.run.max_steps, tok_cpu.run.device) == (1200, "cpu")  # the shipped recipe's steps
    assert (tok_gpu.run.max_steps, tok_gpu.run.eval_every, tok_gpu.run.ckpt_every) == (6000, 1500, 1500)
    assert tok_gpu.run.device == "cuda" and gpu.ar_recipe().run.device == "cuda" and gpu.ar_recipe().run.seed == 2
    # Nothing else differs: the GPU preset is the CPU demo with more tokenizer steps.
    from larp.utils.config import to_dict

    a, b = to_dict(tok_cpu), to_dict(tok_gpu)
    assert {k for k in a["run"] if a["run"][k] != b["run"][k]} == {"max_steps", "eval_every", "ckpt_every", "device"}
    assert {k for k in a if a[k] != b[k]} == {"run"}
    assert to_dict(cpu.ar_recipe())["run"] | {"device": "cuda"} == to_dict(gpu.ar_recipe())["run"]
    # --quick keeps the preset's device and shortens every stage
    quick = Demo.__new__(Demo)
    quick.cfg = demo_config("gpu", device="cpu", quick=True)
    assert quick.cfg.tokenizer_steps == DEMO_PRESETS["gpu"].tokenizer_steps and quick.cfg.clips_per_class == 4
    assert (quick.tokenizer_recipe().run.max_steps, quick.tokenizer_recipe().run.device) == (4, "cpu")
    with pytest.raises(ConfigError, match="unknown demo preset 'tpu'; expected one of cpu, gpu"):
        demo_config("tpu")


def test_device_picks_the_preset_and_a_missing_gpu_is_named(monkeypatch):
    import torch

    from larp.cli import build_parser
    from larp.demo.pipeline import config_from_args
    from larp.utils.errors import LarpError

    def args(*argv: str):
        return build_parser(["demo"]).parse_args(["demo", *argv])

    assert config_from_args(args()) == DemoConfig()  # the default: the CPU demo
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LarpError, match="--device: device 'cuda' asked for, but this torch build sees no CUDA"):
        config_from_args(args("--device", "cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = config_from_args(args("--device", "cuda", "--seed", "4"))
    assert (cfg.device, cfg.tokenizer_steps, cfg.seed, cfg.quick) == ("cuda", 6000, 4, False)
    assert config_from_args(args("--device", "auto")).device == "cuda"
    assert config_from_args(args("--device", "cuda", "--preset", "cpu")) == DemoConfig(device="cuda")
    assert config_from_args(args("--preset", "gpu", "--quick")).device == "cpu"  # the GPU preset on a CPU


@pytest.mark.slow
def test_gpu_preset_runs_on_a_cpu_when_quick(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--preset", "gpu", "--quick", "--out", str(out)]) == 0
    state = json.loads((out / "demo.json").read_text())
    assert state["config"]["tokenizer_steps"] == 6000 and state["config"]["device"] == "cpu"
    assert state["recipes"]["tokenizer"]["run"]["max_steps"] == 4  # quick: a few steps per stage
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"] == "cpu" and metrics["samples"] == 10 and 0 <= metrics["sample_strict_accuracy"] <= 1
    # the same folder with the CPU preset is another demo: refused, naming what differs
    assert main(["demo", "--quick", "--out", str(out)]) == 1
