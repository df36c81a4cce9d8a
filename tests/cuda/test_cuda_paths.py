"""Every CUDA path, on tiny models: skipped without a CUDA device (`pytest -m cuda` runs only these).

bfloat16 tokenization, the three decode-step variants (eager, static shapes, CUDA graphs), one training step
of each model with bf16 autocast and fused optimisers, DDP over NCCL in one process, `larp sample
--device cuda`, and the GPU demo's smoke run. benchmarks/gpu_check.sh runs them first on a GPU machine."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from larp import LARPAR, LARPTokenizer, ar_preset, tokenizer_preset
from larp.sample.generate import generate

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = torch.device("cuda")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    from larp.data.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic")
    paths = write_synthetic_dataset(out, classes=4, clips_per_class=4, frames=8, size=32, seed=0)
    return {k: Path(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tokenizer (8 frames of 32x32 -> 32 tokens of 128 codes) with a class-conditional and a
    frame-prediction AR model on its tokens, random weights, saved in the released format."""
    out = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    fp = ar_preset("ar-tiny")
    fp.frame_prediction, fp.cls_token_num = True, 33
    return {"tokenizer": LARPTokenizer(tokenizer_preset("larp-tiny")).save_pretrained(out / "tok"),
            "ar": random_ar().cpu().save_pretrained(out / "ar"),
            "fp": LARPAR(fp).save_pretrained(out / "fp")}


def random_ar(**overrides) -> LARPAR:
    torch.manual_seed(0)
    cfg = ar_preset("ar-tiny")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    model = LARPAR(cfg).eval()
    torch.nn.init.normal_(model.output.weight, std=0.5)
    return model.to(DEVICE)


def test_tokenizer_encode_decode_under_bfloat16(tiny_models):
    tok = LARPTokenizer.from_pretrained(tiny_models["tokenizer"], map_location=DEVICE).eval()
    video = torch.rand(4, *tok.video_shape, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
    with torch.no_grad():
        idx = tok.encode(video)
        ref = tok.decode(idx)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            idx_bf16 = tok.encode(video)
            rec_bf16 = tok.decode(idx)
    # bfloat16 keeps 8 bits of mantissa: a few near-tied codes may flip, the decoded values move by ~1%.
    assert idx_bf16.shape == idx.shape and (idx_bf16 == idx).float().mean() > 0.8
    assert rec_bf16.dtype == torch.bfloat16
    assert (rec_bf16.float() - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_eager_static_and_cuda_graph_steps_give_the_same_greedy_tokens(cfg_scale):
    model = random_ar()
    cond = torch.tensor([0, 3, 4], device=DEVICE)
    eager = generate(model, cond, cfg_scale=cfg_scale, top_k=1)
    assert torch.equal(generate(model, cond, cfg_scale=cfg_scale, top_k=1, static=True), eager)
    for _ in range(2):  # the second call replays the recorded graphs
        assert torch.equal(generate(model, cond, cfg_scale=cfg_scale, top_k=1, compile=True), eager)


def test_bfloat16_generation_on_cuda_stays_close_to_float32():
    model = random_ar()
    cond = torch.tensor([1, 2], device=DEVICE)
    tokens = torch.randint(0, 128, (2, 32), device=DEVICE)
    with torch.no_grad():
        ref = model.logits(tokens, cond)
        low = model.to(torch.bfloat16).logits(tokens, cond).float()
    model.float()
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()
    out = generate(model, cond, top_k=1, dtype=torch.bfloat16)
    assert out.shape == (2, 32) and int(out.max()) < 128


def _one_batch(task, n: int = 2) -> dict:
    from larp.train.engine import SeededItems

    items = SeededItems(task.train_dataset())
    return torch.utils.data.default_collate([items[(i, i)] for i in range(n)])


def test_tokenizer_training_step_with_bf16_autocast_and_fused_adam(tiny_data, tmp_path):
    from larp.train.engine import setup_context
    from larp.train.tokenizer_task import TokenizerTask
    from tests.train.conftest import tiny_recipe

    recipe = tiny_recipe(tiny_data, tmp_path / "run", "run.device=cuda", "run.precision=bf16")
    task = TokenizerTask(recipe, setup_context(recipe.run))
    assert task.opt_g.defaults["fused"] is True
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    metrics = task.train_step(_one_batch(task), 0)
    assert all(torch.isfinite(torch.tensor(float(v))) for v in metrics.values())
    changed = [k for k, v in task.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("encoder" in k for k in changed) and any("decoder" in k for k in changed)


def test_ar_training_step_with_bf16_autocast_and_fused_adamw(tiny_data, tmp_path):
    from larp.train.ar_task import ARTask
    from larp.train.config import ARTrainConfig, load_recipe
    from larp.train.engine import setup_context

    tok = LARPTokenizer(tokenizer_preset("larp-tiny")).save_pretrained(tmp_path / "tok")
    recipe = load_recipe(ARTrainConfig, None, [
        "model.preset=ar-tiny", f"tokenizer.path={tok}", f"data.train_csv={tiny_data['train']}",
        "data.num_frames=8", "data.size=32", "data.batch_size=2", "data.num_workers=0",
        f"run.out_dir={tmp_path / 'run'}", "run.device=cuda", "run.precision=bf16"])
    task = ARTask(recipe, setup_context(recipe.run))
    assert task.opt.defaults["fused"] is True
    before = task.model.output.weight.detach().clone()
    metrics = task.train_step(_one_batch(task), 0)
    assert 0 < metrics["loss"] < 10 and not torch.equal(task.model.output.weight, before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_over_nccl_in_one_process_matches_a_plain_step():
    import torch.distributed as dist

    plain, ddp_model = random_ar(), random_ar()  # eval mode: no dropout, so both steps see one function
    tokens = torch.randint(0, 128, (4, 32), device=DEVICE)
    cond = torch.tensor([0, 1, 2, 3], device=DEVICE)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(ddp_model, device_ids=[DEVICE.index or 0])
        for model, net in ((plain, plain), (ddp_model, wrapped)):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = net(tokens, cond)
            loss = nn.functional.cross_entropy(logits.float().reshape(-1, 128), tokens.reshape(-1))
            loss.backward()
            opt.step()
    finally:
        dist.destroy_process_group()
    for (name, a), b in zip(plain.named_parameters(), ddp_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_larp_sample_on_cuda(tiny_data, tiny_models, tmp_path):
    from larp.cli import main

    out = tmp_path / "job"
    argv = ["sample", "--ar_model", str(tiny_models["ar"]), "--tokenizer", str(tiny_models["tokenizer"]),
            "--dataset_csv", str(tiny_data["train"]), "--output_dir", str(out), "--num_samples", "4",
            "--sample_batch_size", "2", "--cfg_scale", "1.5", "--no_fvd", "--device", "cuda"]
    assert main(argv) == 0
    job = json.loads((out / "job.json").read_text())
    assert job["dtype"] == "bfloat16"  # the default on CUDA
    assert len(list((out / "samples").rglob("*"))) > 0


def test_larp_generate_on_cuda(tiny_models, tmp_path):
    from larp.cli import main
    from larp.data.video_io import probe_video

    argv = ["generate", "--tokenizer", str(tiny_models["tokenizer"]), "--fp", "--fp_model",
            str(tiny_models["fp"]), "--ar_model", str(tiny_models["ar"]), "--class_id", "1",
            "--num_frames", "20", "-o", str(tmp_path), "--device", "cuda"]
    assert main(argv) == 0
    assert probe_video(tmp_path / "long_000.mp4").num_frames == 20


def test_gpu_demo_preset_quick_on_cuda(tmp_path):
    """The GPU demo's every stage on the device (`larp demo --device cuda`, its smoke settings)."""
    pytest.importorskip("matplotlib")
    from larp.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--device", "cuda", "--quick", "--out", str(out)]) == 0
    state = json.loads((out / "demo.json").read_text())
    assert state["config"]["device"] == "cuda" and state["config"]["tokenizer_steps"] == 6000  # the gpu preset
    assert state["recipes"]["tokenizer"]["run"]["device"] == "cuda"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"] == "cuda" and metrics["samples"] == 10
