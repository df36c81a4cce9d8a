"""Shared blocks: a ViT block computed for some rows only is the whole block's output at those rows."""

from __future__ import annotations

import pytest
import torch

from larp.models.layers import JointTransformer, block_rows, vit_block


@pytest.mark.parametrize("rows", [slice(-16, None), slice(0, 1)])
@pytest.mark.parametrize("training", [False, True])
def test_block_rows_is_the_block_at_those_rows_with_its_gradients(rows, training):
    torch.manual_seed(0)
    block = vit_block(64, 4).train(training)
    h = torch.randn(2, 40, 64, requires_grad=True)
    whole, part = block(h)[:, rows], block_rows(block, h, rows)
    assert part.shape == whole.shape
    torch.testing.assert_close(part, whole, atol=1e-6, rtol=0)
    inputs = [h, *block.parameters()]
    for a, b in zip(torch.autograd.grad(whole.square().sum(), inputs),
                    torch.autograd.grad(part.square().sum(), inputs), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_joint_transformer_returns_the_queries_of_full_blocks():
    torch.manual_seed(1)
    model = JointTransformer(64, 3, 4).eval()
    context, queries = torch.randn(2, 24, 64), torch.randn(2, 8, 64)
    h = torch.cat([context, queries], dim=1)
    for block in model.blocks:
        h = block(h)
    torch.testing.assert_close(model(context, queries), h[:, -8:], atol=1e-6, rtol=0)
