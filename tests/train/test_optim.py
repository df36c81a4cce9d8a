"""The optimiser's fused kernel: where it is taken, and that it is the per-parameter loop's update."""

from __future__ import annotations

import pytest
import torch

from larp.train.optim import fused_adam


def test_fused_kernel_is_taken_on_cpu_and_cuda_only(monkeypatch):
    assert fused_adam(torch.device("cuda")) and not fused_adam(torch.device("meta"))
    monkeypatch.setattr(torch, "__version__", "2.3.1")
    assert not fused_adam(torch.device("cpu"))  # torch has no fused CPU Adam before 2.4
    monkeypatch.setattr(torch, "__version__", "2.4.0+cpu")
    assert fused_adam(torch.device("cpu"))


@pytest.mark.parametrize("cls, decay", [(torch.optim.Adam, 0.0), (torch.optim.AdamW, 0.05)])
def test_fused_update_is_the_loop_update_to_float32_rounding(cls, decay):
    if not fused_adam(torch.device("cpu")):
        pytest.skip("this torch has no fused Adam on a CPU")
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(64, 48, generator=g), torch.randn(48, generator=g) * 1e-3]
    grads = [[torch.randn_like(p) * s for p in start] for s in (1.0, 1e-3, 10.0)]
    runs = []
    for fused in (False, True):
        params = [p.clone().requires_grad_() for p in start]
        opt = cls(params, lr=3e-4, betas=(0.9, 0.99), weight_decay=decay, fused=fused, foreach=None if fused else False)
        for step in grads:
            for p, grad in zip(params, step, strict=True):
                p.grad = grad.clone()
            opt.step()
        runs.append(params)
    for first, loop, fused in zip(start, *runs, strict=True):
        torch.testing.assert_close(fused.detach(), loop.detach(), rtol=1e-6, atol=1e-7)
        assert (loop.detach() - first).abs().min() > 1e-5  # every weight moved: the comparison is not vacuous
