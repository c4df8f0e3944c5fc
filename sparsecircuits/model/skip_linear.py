"""Linear layers that skip the channels a mask switched off (frozen weights, opt-in).

Under a binary node mask (`ablation.mask_hook`) an off channel holds its baseline. Two things follow
for a linear layer `y = x Wᵀ + b` next to masked sites, and `linear` uses both inside
`skipping_masked_channels()` (which `MaskedTask` turns on for its masked forwards):

* **Backward** (any forward that needs gradients): an off channel of a site the layer *writes* (q, k,
  v, the attention or MLP output, an MLP neuron behind its activation) gets no gradient (the mask
  multiplies it by 0), so the input gradient `dL/dx = dL/dy · W` needs only the rows of W whose
  output gradient is not all zero. In learned-mask pruning, after its first few dozen steps about a
  tenth of the neurons and a fifth of the q/k/v and output channels are on (docs/results.md,
  "Pruning speed"), so most of every backward product is skipped. The input gradient stays complete
  (a mask's gradient `sum(dL/dx · (x - baseline))` needs it on off channels too), and the forward is
  `F.linear` unchanged (an off channel's value still matters to its mask's gradient).
  This is exact to the bit: a skipped column is all zeros (NaN never is) and a zero term leaves a
  running float sum unchanged, so only the grouping of the remaining terms could change. The CPU's
  BLAS sums the inner dimension in blocks that depend only on its size (on the AMD EPYC this was
  measured on: one block up to 192, two halves up to 384, blocks of 192 beyond, for products of at
  least 12 rows and columns); the kept rows are multiplied block by block and added in the same
  order, which reproduces the full product bit for bit. The blocks are found once per inner size and
  process by comparing products (`_blocks`); where they are not found, nothing is skipped. So
  pruning with skipping gives the very gates and circuit it gives without.
* **Forward without gradients** (evaluations, single-node ablations): an off channel of a site the
  layer *reads* is the same value at every token, so `y = x[:, var] W[:, var]ᵀ + (x[0, const]
  W[:, const]ᵀ + b)`: the same sum split in two, exact up to the order of float additions (a column
  is constant when its largest and smallest entries are equal; NaN never is). Only where no gradient
  is taken, so a training step's numbers are untouched.

Frozen weights only: a weight that requires grad takes `F.linear`, whose backward also computes the
weight's gradient. Outside the switch, or off the CPU, `linear` is `F.linear`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

_enabled = False

# A product is restricted only when at least this share of the columns can be skipped (below it,
# the gathers cost about what they save) and it is large enough (rows x inner x outer, multiply-adds)
# for the gathers to pay; the backward only when both outer sizes are at least _MIN_SIDE, because
# BLAS libraries take other kernels, summing in another order, for thin products (on the measured
# CPU: below 12 rows or columns).
_MIN_SKIP = 0.25
_MIN_WORK = 1 << 22
_MIN_SIDE = 16


@contextmanager
def skipping_masked_channels(on: bool = True) -> Iterator[None]:
    """Within the block, `linear` skips what masked-off channels make trivial (module docstring). One
    process-wide switch (not per thread), restored on exit."""
    global _enabled
    before, _enabled = _enabled, on
    try:
        yield
    finally:
        _enabled = before


def linear(x: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
    """`F.linear(x, W, b)`; inside `skipping_masked_channels()`, with a frozen weight on the CPU, its
    backward skips all-zero output-gradient columns and, where no gradient is taken, its forward
    computes constant input columns once (module docstring)."""
    if (not _enabled or W.requires_grad or (b is not None and b.requires_grad) or x.device.type != "cpu"
            or x.dim() < 2):
        return F.linear(x, W, b)
    if torch.is_grad_enabled():
        return _SkipLinear.apply(x, W, b) if x.requires_grad else F.linear(x, W, b)
    return _constant_split(x, W, b)


def _constant_split(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    rows = x.reshape(-1, x.shape[-1])
    if rows.numel() * W.shape[0] < _MIN_WORK:
        return F.linear(x, W, b)
    const = rows.amax(0) == rows.amin(0)  # NaN is never equal: a NaN column varies
    if int(const.sum()) < _MIN_SKIP * rows.shape[1]:
        return F.linear(x, W, b)
    var, fixed = torch.nonzero(~const).flatten(), torch.nonzero(const).flatten()
    offset = F.linear(rows[0, fixed], W.index_select(1, fixed), b)  # what the constant channels add, [out]
    y = torch.addmm(offset, rows.index_select(1, var), W.index_select(1, var).t())
    return y.view(*x.shape[:-1], W.shape[0])


class _SkipLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        ctx.save_for_backward(W)
        ctx.x_shape = x.shape
        return F.linear(x, W, b)

    @staticmethod
    @once_differentiable  # a second derivative through this backward raises instead of being wrong
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (W,) = ctx.saved_tensors
        return input_grad(grad.reshape(-1, grad.shape[-1]), W).view(ctx.x_shape), None, None


def input_grad(g: Tensor, W: Tensor) -> Tensor:
    """`g @ W` for `g` [rows, out], `W` [out, in], skipping the all-zero columns of `g`, bit for bit
    equal to `g @ W` (module docstring). Where the BLAS's blocks for this inner size are not known, or
    too few columns are zero, or the product is not float32 or is thin, it is `g @ W`."""
    if (min(len(g), W.shape[1]) < _MIN_SIDE or g.numel() * W.shape[1] < _MIN_WORK
            or not g.dtype == W.dtype == torch.float32):
        return g @ W
    blocks = _blocks(g.shape[1], torch.get_num_threads())
    if blocks is None:
        return g @ W
    live = g.abs().amax(0) != 0  # NaN != 0: a NaN column is kept
    if int(live.sum()) > (1 - _MIN_SKIP) * g.shape[1]:
        return g @ W
    return _blockwise(g, W, live, blocks)


def _blockwise(g: Tensor, W: Tensor, live: Tensor, blocks: tuple[int, ...]) -> Tensor:
    """The product block by block on the live columns, each block added to the running result as the
    BLAS adds its own blocks (`addmm`)."""
    out = None
    for start, end in zip(blocks[:-1], blocks[1:]):
        idx = torch.nonzero(live[start:end]).flatten() + start
        g_b, W_b = g.index_select(1, idx), W.index_select(0, idx)
        out = g_b @ W_b if out is None else torch.addmm(out, g_b, W_b)
    assert out is not None
    return out


@functools.cache
def _blocks(k: int, threads: int) -> tuple[int, ...] | None:
    """Boundaries of the blocks in which this process's CPU float32 matrix product sums an inner
    dimension of size k with `threads` torch threads (the current count), or None if not found.
    Found by trying one block, then equal blocks of every multiple of 8 (largest first), then every
    split in two, until products of the zero-free columns added block by block equal the full
    product bit for bit, for each of four patterns of zero columns (even ones, odd ones, half at
    random, a tenth at random: a boundary off by any number of columns changes the grouping of a
    live column in one of them) at three shapes. On the AMD EPYC of docs/results.md:
    one block up to 192, two near-halves up to 384, then blocks of 192, at every shape of at least
    12 rows and columns."""
    gen = torch.Generator().manual_seed(k)
    cols = torch.arange(k)
    dead = [cols % 2 == 0, cols % 2 == 1, torch.rand(k, generator=gen) < 0.5, torch.rand(k, generator=gen) < 0.1]
    probes = []
    for rows, n in ((_MIN_SIDE, _MIN_SIDE), (37, 40), (200, 130)):
        W = torch.randn(k, n, generator=gen)
        for d in dead:
            g = torch.randn(rows, k, generator=gen).masked_fill(d, 0.0)
            probes.append((g, W, g @ W, ~d))
    candidates = [(0, k)]
    candidates += [(*range(0, k, b), k) for b in range(8 * ((k - 1) // 8), 7, -8)]
    candidates += [(0, s, k) for s in range(1, k)]
    for bounds in candidates:
        if all(torch.equal(_blockwise(g, W, live, bounds), full) for g, W, full, live in probes):
            return bounds
    return None
