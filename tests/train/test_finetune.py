"""Fine-tuning: starting from saved weights, a new AR class count, frozen tokenizer parts, a fresh
discriminator with its own warm-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from larp import LARPAR, LARPTokenizer, ar_preset, tokenizer_preset
from larp.train import checkpoint as ckpt
from larp.train.config import ARTrainConfig, TokenizerTrainConfig, load_recipe
from larp.train.engine import setup_context
from larp.train.finetune import TOKENIZER_PARTS, load_init_weights
from larp.train.run import train
from larp.train.tokenizer_task import TokenizerTask
from larp.utils.config import ConfigError
from tests.train.conftest import tiny_recipe


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    torch.manual_seed(5)
    model = LARPTokenizer(tokenizer_preset("larp-tiny"))
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.05)
    torch.nn.init.normal_(model.encoder_latent_query_embed, std=1.0)
    return model.save_pretrained(tmp_path_factory.mktemp("ft") / "tokenizer")


@pytest.fixture(scope="module")
def ar_folder(tmp_path_factory) -> Path:
    torch.manual_seed(6)
    model = LARPAR(ar_preset("ar-tiny"))  # 5 classes and a null class
    torch.nn.init.normal_(model.output.weight, std=0.05)
    return model.save_pretrained(tmp_path_factory.mktemp("ft") / "ar")


def test_tokenizer_starts_from_the_checkpoint_exactly_with_a_fresh_optimiser(tiny_data, tokenizer_folder, tmp_path):
    # The initialisation options of a from-scratch recipe must not touch the loaded weights.
    recipe = tiny_recipe(tiny_data, tmp_path / "t", f"model.init_from={tokenizer_folder}",
                         "codebook.init_from_encoder=true", "codebook.query_init_std=1.0")
    task = TokenizerTask(recipe, setup_context(recipe.run))
    ref = LARPTokenizer.from_pretrained(tokenizer_folder)
    video = torch.stack([task.val_set[i]["video"] for i in range(2)])
    with torch.no_grad():
        codes = task.model.eval().encode(video)
        assert torch.equal(codes, ref.encode(video))
        assert torch.equal(task.model.decode(codes), ref.decode(codes))
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in task.model.state_dict().items())
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in task.ema.module.state_dict().items())
    assert task.opt_g.state_dict()["state"] == {}
    # The architecture is the checkpoint's: the recipe's preset is not used.
    assert recipe.model_config() == ref.config


def test_ar_model_moves_to_a_new_class_count(ar_folder, tmp_path):
    recipe = load_recipe(ARTrainConfig, None, [f"model.init_from={ar_folder}", "model.config.num_classes=3",
                                               "model.class_rows=[4, -1, 0]", f"run.out_dir={tmp_path}"])
    old = LARPAR.from_pretrained(ar_folder)
    torch.manual_seed(recipe.run.seed)
    fresh = LARPAR(recipe.model_config())  # rows initialised as in training, as the run builds them
    torch.manual_seed(recipe.run.seed)
    model = LARPAR(recipe.model_config())
    load_init_weights(model, str(ar_folder), recipe.model.class_rows)
    table, old_table = model.cls_embedding.embedding_table.weight, old.cls_embedding.embedding_table.weight
    assert table.shape == (4, 64) and old_table.shape == (6, 64)
    assert torch.equal(table[0], old_table[4]) and torch.equal(table[2], old_table[0])
    assert torch.equal(table[1], fresh.cls_embedding.embedding_table.weight[1])
    assert not torch.equal(table[1], old_table[1])
    assert torch.equal(table[3], old_table[5])  # the null class (guidance) is kept
    others = {k: v for k, v in model.state_dict().items() if not k.startswith("cls_embedding.")}
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in others.items())
    # At step 0 the new class 0 is the checkpoint's class 4, and the null class the checkpoint's.
    tokens = torch.randint(0, 128, (2, 32))
    with torch.no_grad():
        assert torch.equal(model.eval().logits(tokens, torch.tensor([0, 3])),
                           old.logits(tokens, torch.tensor([4, 5])))
    with pytest.raises(ConfigError, match=r"model.class_rows must be one entry per class of the new model \(3\)"):
        load_recipe(ARTrainConfig, None, [f"model.init_from={ar_folder}", "model.config.num_classes=3",
                                          "model.class_rows=[4, -1]"])


def test_ar_class_count_change_without_class_rows_starts_every_class_fresh(ar_folder):
    cfg = ar_preset("ar-tiny")
    cfg.num_classes = 7
    torch.manual_seed(0)
    model = LARPAR(cfg)
    before = model.cls_embedding.embedding_table.weight.detach().clone()
    load_init_weights(model, str(ar_folder))
    table = model.cls_embedding.embedding_table.weight
    old = LARPAR.from_pretrained(ar_folder).cls_embedding.embedding_table.weight
    assert torch.equal(table[:7], before[:7]) and torch.equal(table[7], old[5])
    with pytest.raises(ConfigError, match=r"model.class_rows\[1\]=5: expected -1 \(a fresh row\) or a class of "
                                          r"the checkpoint, in \[0, 5\)"):
        load_init_weights(model, str(ar_folder), [0, 5, -1, -1, -1, -1, -1])
    cfg = ar_preset("ar-tiny")
    cfg.dim, cfg.n_head = 32, 4
    with pytest.raises(Exception, match="shape mismatch"):
        load_init_weights(LARPAR(cfg), str(ar_folder))


def test_ar_fine_tune_from_the_command_line_on_a_new_class_count(tiny_data, ar_folder, tmp_path):
    from larp.cli import main

    tokenizer = LARPTokenizer(tokenizer_preset("larp-tiny")).save_pretrained(tmp_path / "tok")
    out = tmp_path / "ft"
    recipe = tmp_path / "finetune.yaml"
    recipe.write_text(f"""
model:
  init_from: {ar_folder}
  config: {{num_classes: 4}}
  class_rows: [0, 1, 2, -1]   # classes 0-2 start from the checkpoint's, class 3 fresh
tokenizer: {{path: {tokenizer}}}
data: {{train_csv: {tiny_data['train']}, val_csv: {tiny_data['val']}, num_frames: 8, size: 32, batch_size: 4,
       num_workers: 0, val_clips: 4}}
optim: {{lr: 1.0e-4, betas: [0.9, 0.95]}}
run: {{max_steps: 2, eval_every: 2, ckpt_every: 2, log_every: 1}}
""")
    code = main(["train", "ar", "--config", str(recipe), "--out", str(out)])
    assert code == 0
    exported = LARPAR.from_pretrained(out / "model")
    assert exported.config.num_classes == 4 and exported.cls_embedding.embedding_table.weight.shape == (5, 64)
    saved = (out / "config.yaml").read_text()
    assert f"init_from: {ar_folder}" in saved and "- -1" in saved
    assert (out / "samples" / "ar_step00000002.png").exists()


@pytest.mark.parametrize("parts", [["encoder", "codebook"], ["decoder", "prior"]])
def test_frozen_parts_are_bit_identical_after_training(tiny_data, tokenizer_folder, tmp_path, parts):
    out = tmp_path / "frozen"
    train(tiny_recipe(tiny_data, out, f"model.init_from={tokenizer_folder}", f"model.freeze={parts}",
                      "run.max_steps=3", "loss.disc_every=1"), TokenizerTask)
    start = LARPTokenizer.from_pretrained(tokenizer_folder).state_dict()
    final = ckpt.load_checkpoint(ckpt.list_checkpoints(out / "checkpoints")[-1])["task"]
    frozen = {k for k in start if k.startswith(sum((TOKENIZER_PARTS[p] for p in parts), ()))}
    assert frozen and all(torch.equal(final["model"][k], start[k]) for k in frozen)
    assert all(torch.equal(final["ema"]["module." + k], start[k]) for k in frozen)
    trained = [k for k in start if k not in frozen and not torch.equal(final["model"][k], start[k])]
    assert len(trained) > 10  # the rest did train


def test_freeze_rejects_what_would_change_a_frozen_codebook():
    with pytest.raises(ConfigError, match="codebook.dead_code_steps must be 0 with the codebook frozen, got 5"):
        load_recipe(TokenizerTrainConfig, None,
                    ["model.preset=larp-tiny", "model.freeze=[codebook]", "codebook.dead_code_steps=5"])
    with pytest.raises(ConfigError, match="leaves nothing to train"):
        load_recipe(TokenizerTrainConfig, None,
                    ["model.preset=larp-tiny", "model.freeze=[encoder, decoder, prior, codebook]"])


def test_fresh_discriminator_learns_alone_first_with_its_own_warmup(tiny_data, tokenizer_folder, tmp_path):
    out = tmp_path / "gan"
    train(tiny_recipe(tiny_data, out, f"model.init_from={tokenizer_folder}", "loss.disc_start_step=0",
                      "loss.gan_start_step=3", "loss.disc_every=1", "discriminator.warmup_steps=4",
                      "discriminator.lr=1e-4", "run.max_steps=4"), TokenizerTask)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [("train/d_loss" in r, "train/g_adv" in r) for r in rows] == [
        (True, False), (True, False), (True, False), (True, True)]
    # Its own learning-rate warm-up over 4 steps, from 0.01 + 0.99 / 4 at step 1: half-way (0.505) at step 2,
    # all of it at step 4.
    for step, factor in ((2, 0.505), (4, 1.0)):
        state = ckpt.load_checkpoint(out / "checkpoints" / f"step_{step:08d}")["task"]
        assert state["opt_d"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * factor)
        assert state["lecam"]["num_updates"] == step


def test_overwrite_refuses_to_delete_the_weights_it_starts_from(tiny_data, tokenizer_folder, tmp_path):
    from larp.train.run import RunFolderError

    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    for f in tokenizer_folder.iterdir():
        (out / "model" / f.name).write_bytes(f.read_bytes())
    (out / "config.yaml").write_text("x: 1\n")
    with pytest.raises(RunFolderError, match="is an input of this run but lies in .*which --overwrite would delete"):
        train(tiny_recipe(tiny_data, out, f"model.init_from={out / 'model'}"), TokenizerTask, overwrite=True)
    assert (out / "model" / "model.safetensors").exists()
