"""The pieces of the decoding loop: prefill, the decode step and its variants, guidance, precision."""

from __future__ import annotations

import pytest
import torch

from larp import LARPAR, ar_preset
from larp.sample.generate import (
    compiled_decode_step,
    decode_step,
    generate,
    generate_without_cache,
    guide,
    guided_condition,
    in_dtype,
    prefill,
    sample_next,
    static_decode_step,
)


def random_ar(frame_prediction: bool = False, **overrides) -> LARPAR:
    torch.manual_seed(0)
    cfg = ar_preset("ar-tiny")
    if frame_prediction:
        cfg.frame_prediction, cfg.cls_token_num = True, 33
    for k, v in overrides.items():
        setattr(cfg, k, v)
    model = LARPAR(cfg).eval()
    torch.nn.init.normal_(model.output.weight, std=0.5)  # zero-initialised output would make every logit tie
    return model


def fp_cond(batch: int) -> torch.Tensor:
    return torch.cat([torch.randint(0, 128, (batch, 32)), torch.full((batch, 1), 128)], dim=1)


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_decode_step_equals_the_module_forward_bit_for_bit(n_kv_head):
    model = random_ar(n_kv_head=n_kv_head)
    cond = torch.tensor([0, 1, 4])
    with torch.no_grad():
        caches = [model.new_caches(3, 32) for _ in range(4)]
        for c in caches:
            prefill(model, cond, c)
        for pos in range(1, 31):
            t = torch.randint(0, 128, (3,))
            emb = model.tok_embeddings(t[:, None])
            ref = model.forward_hidden(emb, caches[0], pos)[:, -1]
            assert torch.equal(decode_step(model, t, caches[1], pos), ref)
            p = torch.tensor(pos)  # the static variant: the whole cache, masked
            ref_static = model.forward_hidden(emb, caches[2], p)[:, -1]
            assert torch.equal(static_decode_step(model, t, caches[3], p), ref_static)
            torch.testing.assert_close(ref_static, ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(caches[0][1].k, caches[1][1].k) and torch.equal(caches[2][1].v, caches[3][1].v)


def test_prefill_gives_the_teacher_forced_logits_of_the_first_token():
    for model, cond in ((random_ar(), torch.tensor([2, 3])), (random_ar(frame_prediction=True), fp_cond(2))):
        tokens = torch.randint(0, 128, (2, 32))
        with torch.no_grad():
            first = prefill(model, cond, model.new_caches(2, model.cond_length + 31))
            torch.testing.assert_close(first, model.logits(tokens, cond)[:, 0], atol=1e-5, rtol=1e-5)


def test_static_step_takes_a_tensor_position():
    model = random_ar()
    with pytest.raises(ValueError, match="takes the position as a 0-d tensor, got 3"):
        static_decode_step(model, torch.tensor([1]), model.new_caches(1, 8), 3)


def test_guidance_runs_both_halves_in_one_batch():
    model = random_ar()
    cond, guided = guided_condition(model, torch.tensor([1, 2]), 1.5)
    assert guided and cond.tolist() == [1, 2, 5, 5]  # the null class is the last row (5 classes)
    assert guided_condition(model, torch.tensor([1]), 1.0)[1] is False
    assert guided_condition(random_ar(frame_prediction=True), fp_cond(1), 2.0)[1] is False
    logits = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert guide(logits, 2, 2.0).tolist() == [[2.0, 3.0], [5.0, -1.0]]  # u + 2 (c - u)
    assert torch.equal(guide(logits, 2, 2.0, active=False), logits[:2])
    with pytest.raises(ValueError, match="needs a model trained with a null class"):
        guided_condition(random_ar(class_dropout_prob=0.0), torch.tensor([1]), 1.5)


def test_temperature_one_samples_as_dividing_by_one():
    logits = torch.randn(4, 128)
    a = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(2))
    b = torch.multinomial(torch.softmax(logits / 1.0, -1), 1, generator=torch.Generator().manual_seed(2))[:, 0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_eager_and_static_loops_give_the_tokens_of_the_uncached_loop(cfg_scale):
    model = random_ar()
    cond = torch.tensor([0, 2, 4])
    for kwargs in ({"top_k": 1}, {"generator": torch.Generator().manual_seed(9)}):
        ref = generate_without_cache(model, cond, cfg_scale=cfg_scale, **kwargs)
        for static in (False, True):
            if "generator" in kwargs:
                kwargs["generator"] = torch.Generator().manual_seed(9)
            assert torch.equal(generate(model, cond, cfg_scale=cfg_scale, static=static, **kwargs), ref)


@pytest.mark.slow
def test_compiled_cpu_step_gives_the_greedy_tokens_of_the_eager_step():
    # Compiles the tiny model with inductor (tens of seconds on a CPU, once per process).
    model = random_ar()
    cond = torch.tensor([0, 3, 4])
    eager = generate(model, cond, cfg_scale=2.0, top_k=1)
    assert torch.equal(generate(model, cond, cfg_scale=2.0, top_k=1, compile=True), eager)
    # Another batch size and no guidance: the same compiled step (shapes are dynamic), the same tokens.
    assert torch.equal(generate(model, torch.tensor([1]), top_k=1, compile=True),
                       generate(model, torch.tensor([1]), top_k=1))


def test_compile_names_the_supported_devices():
    with pytest.raises(ValueError, match="compile=True supports cpu and cuda devices, got meta"):
        compiled_decode_step(torch.device("meta"))


def test_bfloat16_runs_a_cast_copy_whose_logits_stay_close_to_float32():
    model = random_ar()
    assert in_dtype(model, None) is model and in_dtype(model, torch.float32) is model
    half = in_dtype(model, torch.bfloat16)
    assert half is not model and half.output.weight.dtype == torch.bfloat16
    assert model.output.weight.dtype == torch.float32  # the model itself is untouched
    cond = torch.tensor([1, 3])
    tokens = torch.randint(0, 128, (2, 32))
    with torch.no_grad():
        ref = model.logits(tokens, cond)
        low = half.logits(tokens, cond).float()
    # bfloat16 keeps 8 bits of mantissa: logits of magnitude ~10 move by a few hundredths.
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    out = generate(model, cond, top_k=1, dtype=torch.bfloat16)
    assert out.shape == (2, 32) and out.dtype == torch.long and int(out.max()) < 128


def test_generate_restores_training_mode_and_checks_lengths():
    model = random_ar().train()
    out = generate(model, torch.tensor([0]), top_k=1, num_tokens=5)
    assert model.training and out.shape == (1, 5)
    assert torch.equal(out, generate(model.eval(), torch.tensor([0]), top_k=1)[:, :5])
    with pytest.raises(ValueError, match=r"num_tokens must be in \[1, 32\], got 33"):
        generate(model, torch.tensor([0]), num_tokens=33)
