"""`model/skip_linear.py`: a linear layer whose backward skips all-zero output-gradient columns.

Ground truth is `F.linear`'s own backward (`g @ W`). Where the BLAS block was found the result must
be equal to the bit (that is what keeps learned-mask pruning's circuit unchanged); elsewhere equal to
float rounding. Masked forwards of every model variant must give the same gradients (inputs and
masks) with and without skipping.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_attention_mask import VARIANTS

from conftest import tiny_model
from sparsecircuits.ablation import masked_hooks, prune_sites
from sparsecircuits.model.skip_linear import _blocks, _blockwise, input_grad, linear, skipping_masked_channels


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    if _blocks(128, torch.get_num_threads()) and _blocks(512, torch.get_num_threads()):
        assert torch.equal(a, b), (a - b).abs().max()
    else:  # pragma: no cover - a BLAS whose blocks were not found: exact up to rounding
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows,out,inp", [(300, 128, 128), (20, 2048, 128), (64, 700, 128), (1015, 512, 64), (3, 16, 16)])
@pytest.mark.parametrize("zero_share", [0.0, 0.5, 0.9, 1.0])
def test_input_grad_equals_the_full_product(rows, out, inp, zero_share):
    gen = torch.Generator().manual_seed(rows + out)
    g = torch.randn(rows, out, generator=gen)
    g[:, torch.rand(out, generator=gen) < zero_share] = 0
    g[torch.rand(rows, out, generator=gen) < 0.5] = 0  # scattered zeros (AbsTopK) do not make a column dead
    W = torch.randn(out, inp, generator=gen)
    W[torch.rand(out, inp, generator=gen) < 0.8] = 0
    _same(input_grad(g, W), g @ W)


def test_input_grad_keeps_nan_and_inf_columns(monkeypatch):
    import sparsecircuits.model.skip_linear as skip_module

    monkeypatch.setattr(skip_module, "_MIN_WORK", 0)
    g = torch.zeros(16, 64)
    g[1, 3], g[2, 40] = float("nan"), float("inf")
    W = torch.ones(64, 16)
    got = input_grad(g, W)
    assert got[1].isnan().all() and got[2].isinf().all() and (got[[0, 3]] == 0).all()


@pytest.mark.parametrize("k", [64, 128, 300, 512, 1024])
def test_blocks_found_reproduce_the_full_product(k):
    """Where the BLAS's summation blocks are found (every CPU this project has run on), products on
    fresh data and shapes restricted to them are the full product bit for bit; where they are not
    found, nothing is restricted (`input_grad` is `g @ W`)."""
    blocks = _blocks(k, torch.get_num_threads())
    gen = torch.Generator().manual_seed(1000 + k)
    for rows, n, share in ((16, 16, 0.5), (333, 128, 0.9), (1015, 64, 0.3)):
        g = torch.randn(rows, k, generator=gen)
        g[:, torch.rand(k, generator=gen) < share] = 0
        W = torch.randn(k, n, generator=gen)
        if blocks is not None:
            assert torch.equal(_blockwise(g, W, g.abs().amax(0) != 0, blocks), g @ W)
        else:  # pragma: no cover - a BLAS whose blocks were not found
            assert torch.equal(input_grad(g, W), g @ W)


def test_linear_is_f_linear_outside_the_switch_and_for_trained_weights():
    x = torch.randn(2, 5, 8, requires_grad=True)
    W, b = torch.randn(6, 8), torch.randn(6)
    assert "SkipLinear" not in type(linear(x, W, b).grad_fn).__name__
    with skipping_masked_channels():
        assert "SkipLinear" in type(linear(x, W, b).grad_fn).__name__
        Wt = W.clone().requires_grad_()
        y = linear(x, Wt, b)
        assert "SkipLinear" not in type(y.grad_fn).__name__
        y.sum().backward()
        assert Wt.grad is not None
        with torch.no_grad():
            assert linear(x, W, b).grad_fn is None
    assert "SkipLinear" not in type(linear(x, W, b).grad_fn).__name__


def test_linear_forward_and_gradient_match_f_linear():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 64, generator=gen, requires_grad=True)
    W, b = torch.randn(256, 64, generator=gen), torch.randn(256, generator=gen)
    dead = torch.rand(256, generator=gen) < 0.7
    g = torch.randn(3, 20, 256, generator=gen).masked_fill(dead, 0.0)
    y_ref = F.linear(x, W, b)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    with skipping_masked_channels():
        y = linear(x, W, b)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(y, y_ref)
    _same(gx, gx_ref)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_masked_forward_gradients_unchanged_by_skipping(variant, monkeypatch):
    """The gradients learned-mask pruning uses: every prune site masked (binary, most channels off,
    mean-like baselines), task-like loss at the last position; the mask and input gradients must be
    those of the plain backward."""
    import sparsecircuits.model.skip_linear as skip_module

    monkeypatch.setattr(skip_module, "_MIN_WORK", 0)  # tiny products: restrict them anyway
    model = tiny_model(**VARIANTS[variant])
    for p in model.parameters():
        p.requires_grad_(False)
    sites = prune_sites(model)
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, 97, (6, 12), generator=gen)

    def grads(skip: bool) -> list[torch.Tensor]:
        masks = {s.hook: (torch.rand(s.shape, generator=torch.Generator().manual_seed(i)) < 0.3).float().requires_grad_()
                 for i, s in enumerate(sites)}
        base = {s.hook: torch.randn(s.shape, generator=torch.Generator().manual_seed(100 + i)) for i, s in enumerate(sites)}
        with model.hooks(masked_hooks(masks, base)), skipping_masked_channels(skip):
            logits = model(tokens)[:, -1]
        loss = (logits[:, 3] - logits[:, 5]).square().mean()
        return list(torch.autograd.grad(loss, list(masks.values())))

    for got, ref in zip(grads(True), grads(False)):
        _same(got, ref)


def test_no_grad_forward_splits_constant_columns(monkeypatch):
    """Without gradients, constant input columns (masked-off channels) are computed once: equal to
    `F.linear` up to float rounding; a NaN column is never taken for constant; too few constant
    columns, or a product with a gradient, take `F.linear` itself."""
    import sparsecircuits.model.skip_linear as skip_module

    monkeypatch.setattr(skip_module, "_MIN_WORK", 0)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 128, generator=gen)
    off = torch.rand(128, generator=gen) < 0.8
    x[..., off] = torch.randn(int(off.sum()), generator=gen)  # the baseline: one value per channel
    W, b = torch.randn(96, 128, generator=gen), torch.randn(96, generator=gen)
    with skipping_masked_channels(), torch.no_grad():
        y = linear(x, W, b)
        torch.testing.assert_close(y, F.linear(x, W, b), rtol=1e-5, atol=1e-5)
        x_nan = x.clone()
        x_nan[0, 5, int(torch.nonzero(off)[0])] = float("nan")  # an off channel, NaN at one token only
        y_nan = linear(x_nan, W, b)
        assert y_nan[0, 5].isnan().all() and not y_nan[0, 4].isnan().any() and not y_nan[1].isnan().any()
        varied = torch.randn(2, 40, 128, generator=gen)
        assert torch.equal(linear(varied, W, b), F.linear(varied, W, b))
    with skipping_masked_channels():
        assert torch.equal(linear(x, W, b), F.linear(x, W, b))  # a forward that may be differentiated


def test_second_derivative_through_the_skipping_backward_raises():
    x = torch.randn(4, 20, 32, requires_grad=True)
    W = torch.randn(32, 32)
    with skipping_masked_channels():
        y = linear(x, W)
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()
