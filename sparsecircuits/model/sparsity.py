"""Weight and activation sparsity of Gao et al. (2025), "Weight-sparse transformers have
interpretable circuits" (arXiv 2511.13653).

Three pure pieces, used by the model and the training loop:

* `abs_topk(x, frac)` — activation sparsity: per token keep the `k = round(frac * d)` entries of
  largest magnitude along the last dimension, zero the rest. Gradients flow through kept entries.
  `abs_topk_mask` is its selection alone (a 0/1 mask). On the CPU it is found by threshold: the
  k-th largest |x| of each row (numpy's `partition`, a vectorised selection about 10x faster than
  torch's CPU `topk` at these widths), then `|x| >= it`. Where that keeps exactly k entries the
  top-k set is unique, so this is `topk`'s selection; rows with a tie at the threshold (more than
  k kept) take `topk`'s own choice, so the selection is the same as `topk`'s in every case.
* `topk_mask(w, k, min_per_neuron, neuron_dim)` / `project_(w, ...)` — weight sparsity: keep exactly
  `k` entries of a matrix by |w|: the `j` largest of every neuron (every slice along `neuron_dim`), so
  no neuron is left with fewer than `j` connections, plus the largest of the remaining entries.
  Ties are broken arbitrarily (deterministically); the count is always exactly k. Steps:
  1. (CPU) one global top-k of |w|; if it already gives every neuron >= j entries it *is* the answer
     (each neuron's kept entries include its top-j, and the rest are the largest remaining), and
     the per-neuron top-j pass is skipped;
  2. otherwise force each neuron's top-j in (their scores drop below every |w|) and add the global
     top-(k - n_neurons * j) of the rest.
  A global top-k over a flattened matrix runs on one CPU core at a large cost per entry, so on CPU
  both steps search a candidate set instead: every entry >= a threshold read off a strided sample
  of ~4096 scores with a safety margin. When at least k entries pass, they contain the answer of both
  steps; when fewer pass (a bad sample) it falls back to all entries — exact either way. On GPU
  `topk` is already a fast radix select and these shortcuts would add host syncs, so only step 2
  runs there, over all entries.
* `kept_fraction(step, total, target, start, end)` — the L0 schedule: fully dense until
  `start * total`, then linear to `target` at `end * total` (defaults 1% and 50% of training).

Neuron axis convention (weights are stored as PyTorch `[out, in]`): matrices that read from the
residual stream (q, k, v, MLP in, unembedding) and the embedding `[vocab, d_model]` keep >= j per row;
matrices that write to it (attention out, MLP out) keep >= j per column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

# Non-negative IEEE floats order exactly as their bit patterns read as signed integers of the same
# width (the sign bit is 0), so the selection of |x| can run on integers: on the CPU `topk` is ~25%
# faster on them, and numpy's `partition` (`_threshold_mask`) is SIMD-vectorised for integers (torch
# 2.13, numpy 2.4, one thread, 480 x 128: `topk` 0.51 ms, `partition` 0.05 ms; 480 x 512: 2.0 vs
# 0.27 ms). `topk` was the largest single cost of a pruning gate step (docs/results.md). NaN
# (0x7fc...) still ranks above +inf, as in float `topk`; only the choice among exactly tied
# magnitudes may differ from float `topk`, which leaves it unspecified anyway.
_SAME_ORDER_INT = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
                   torch.bfloat16: torch.int16}


def abs_topk_mask(x: Float[Tensor, "... d"], frac: float) -> Float[Tensor, "... d"] | None:
    """The selection of AbsTopK as a 0/1 mask of x's dtype (1 = kept), or None when it keeps everything.

    The mask is built from |x| without a gradient, so `x * mask` passes gradients to the kept entries
    only, and a fixed mask makes AbsTopK the linear map `x -> mask * x` (what the models' `*_keep` hooks
    expose and what attribution graphs freeze)."""
    d = x.shape[-1]
    k = topk_count(d, frac)
    if k >= d:
        return None
    mag = x.detach().abs()
    if mag.device.type == "cpu" and mag.dtype in _SAME_ORDER_INT:
        mag = mag.view(_SAME_ORDER_INT[mag.dtype])
        if mag.numel() and not torch.compiler.is_compiling():
            return _threshold_mask(mag.contiguous(), k, x.dtype)
    idx = mag.topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(x, requires_grad=False).scatter_(-1, idx, 1.0)


def _threshold_mask(keys: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """0/1 mask (of `dtype`) of the k largest `keys` along the last dimension: the entries `topk` picks.

    The k-th largest of each row (numpy's `partition`: a SIMD quickselect for 16/32/64-bit integers
    on AVX2 / AVX-512 CPUs, introselect elsewhere) is a threshold. Where the (k+1)-th largest is below it, exactly k keys reach it and they are the
    unique top k. A row where they are equal (a tie at the threshold) is redone with `topk` itself,
    whose choice among tied entries is made per row. Ties are rare, so they are looked for only when
    the mask's total is above k per row."""
    d = keys.shape[-1]
    rows = keys.reshape(-1, d)
    part = np.partition(rows.numpy(), d - k, axis=-1)
    kth = torch.from_numpy(part[:, d - k : d - k + 1])
    mask = torch.empty(rows.shape, dtype=dtype)
    torch.ge(rows, kth, out=mask)  # the comparison written as 0/1 of `dtype` in one pass
    # Every row keeps at least k; all keep exactly k (one sum, exact: float32 counts below 2**24) = no tie.
    exact = dtype == torch.float32 and mask.numel() < 2**24
    if int(mask.sum() if exact else mask.sum(dtype=torch.float64)) == k * len(rows):
        return mask.view(keys.shape)
    tied = torch.from_numpy(np.flatnonzero(part[:, : d - k].max(-1) == part[:, d - k]))
    if len(tied):
        idx = rows[tied].topk(k, dim=-1, sorted=False).indices
        mask[tied] = torch.zeros(len(tied), d, dtype=dtype).scatter_(-1, idx, 1.0)
    return mask.view(keys.shape)


def abs_topk(x: Float[Tensor, "... d"], frac: float) -> Float[Tensor, "... d"]:
    """Keep the round(frac * d) largest-|x| entries of the last dimension (at least 1); zero the rest."""
    mask = abs_topk_mask(x, frac)
    return x if mask is None else x * mask


def topk_count(d: int, frac: float) -> int:
    """Number of entries AbsTopK keeps out of d."""
    return max(1, min(d, int(round(frac * d))))


def min_nonzeros(shape: tuple[int, ...], min_per_neuron: int, neuron_dim: int) -> int:
    """Smallest k compatible with the per-neuron minimum."""
    n_neurons = shape[neuron_dim]
    fan = math.prod(shape) // n_neurons
    return n_neurons * min(min_per_neuron, fan)


def target_nonzeros(shape: tuple[int, ...], frac: float, min_per_neuron: int, neuron_dim: int) -> int:
    """Nonzeros a matrix keeps at kept fraction `frac`: round(frac * numel), raised to the minimum."""
    numel = math.prod(shape)
    return min(numel, max(int(round(frac * numel)), min_nonzeros(shape, min_per_neuron, neuron_dim)))


def topk_mask(w: Float[Tensor, "rows cols"], k: int, min_per_neuron: int, neuron_dim: int) -> Tensor:
    """Boolean mask selecting exactly k entries: each neuron's top-j by |w|, then the largest others."""
    if w.dim() != 2:
        raise ValueError(f"weight sparsity applies to 2-D matrices, got shape {tuple(w.shape)}")
    numel = w.numel()
    if not 0 < k <= numel:
        raise ValueError(f"k must be in [1, {numel}] for a matrix of shape {tuple(w.shape)}, got {k}")
    need = min_nonzeros(tuple(w.shape), min_per_neuron, neuron_dim)
    if k < need:
        raise ValueError(
            f"k={k} is below the per-neuron minimum: {w.shape[neuron_dim]} neurons x {min_per_neuron} = {need}"
        )
    if k == numel:
        return torch.ones_like(w, dtype=torch.bool)
    fan_dim = 1 - neuron_dim
    j = min(min_per_neuron, w.shape[fan_dim])
    on_cpu = w.device.type == "cpu"
    # A fresh row-major copy: flat index i is entry (i // cols, i % cols), and scatter_ cannot touch w.
    scores_RC = w.detach().abs().float().contiguous()
    flat = scores_RC.view(-1)
    cand = _candidates(flat, k, w.shape[1]) if on_cpu else None
    mask_RC = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    if on_cpu:  # step 1: a plain top-k, kept if no neuron is starved
        idx = _largest(flat, cand, k)
        if j == 0 or int(_neuron_counts(idx, w.shape, neuron_dim).min()) >= j:
            mask_RC.view(-1)[idx] = True
            return mask_RC
    if j > 0:  # step 2
        forced = scores_RC.topk(j, dim=fan_dim, sorted=False).indices
        mask_RC.scatter_(fan_dim, forced, True)
        scores_RC.scatter_(fan_dim, forced, -1.0)  # below every |w|: never picked again
    rest = k - w.shape[neuron_dim] * j
    if rest > 0:
        mask_RC.view(-1)[_largest(flat, cand, rest)] = True
    return mask_RC


# Size of the strided sample that sets the candidate threshold in `_candidates`.
_SAMPLE = 4096


def _candidates(flat: Tensor, k: int, row_len: int) -> Tensor | None:
    """Flat indices of every score >= a threshold passed by at least k of them; None = use all.

    Such a set holds the k largest scores and, once any k - r entries are forced in (dropped to -1),
    the r largest of the others: every entry outside it is below every unforced one inside.
    """
    n = flat.numel()
    # Only worth it when the sample is small next to the matrix and few entries are kept (above a
    # quarter, the candidates would be about half the matrix and plain topk is as fast).
    if n <= 4 * _SAMPLE or 4 * k >= n:
        return None
    stride = n // _SAMPLE
    while math.gcd(stride, row_len) > 1:  # walk across the columns, not down a few of them
        stride += 1
    sample = flat[::stride]
    m = sample.numel()
    # About p*m sample entries lie above the true k-th largest; aim ~4 binomial std lower.
    p = k / n
    rank = min(m, int(p * m + 4 * math.sqrt(p * m) + 16))
    lo = sample.kthvalue(m - rank + 1).values  # the rank-th largest of the sample
    cand = (flat >= lo).nonzero().squeeze(1)
    return cand if cand.numel() >= k else None  # a bad sample: fall back to everything, still exact


def _largest(flat: Tensor, cand: Tensor | None, r: int) -> Tensor:
    """Flat indices of the r largest scores (ties arbitrary), searching only `cand` when given."""
    if cand is None:
        return flat.topk(r, sorted=False).indices
    return cand[flat[cand].topk(r, sorted=False).indices]


def _neuron_counts(idx: Tensor, shape: torch.Size, neuron_dim: int) -> Tensor:
    """Selected entries per neuron, from flat row-major indices."""
    neuron = idx // shape[1] if neuron_dim == 0 else idx % shape[1]
    return torch.bincount(neuron, minlength=shape[neuron_dim])


@torch.no_grad()
def project_(w: Tensor, k: int, min_per_neuron: int, neuron_dim: int) -> Tensor:
    """In place: zero every entry of `w` outside `topk_mask`; returns the mask."""
    mask = topk_mask(w, k, min_per_neuron, neuron_dim)
    w.mul_(mask)
    return mask


def kept_fraction(step: int, total_steps: int, target: float, start: float = 0.01, end: float = 0.5) -> float:
    """L0 schedule: 1.0 before `start*total`, linear to `target` at `end*total`, `target` after."""
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"schedule fractions must satisfy 0 <= start <= end <= 1, got {start}, {end}")
    t0, t1 = start * total_steps, end * total_steps
    if step <= t0:
        return 1.0
    if step >= t1 or t1 == t0:
        return target
    return 1.0 + (target - 1.0) * (step - t0) / (t1 - t0)


@dataclass(frozen=True)
class SparseWeight:
    """A matrix under weight sparsity: its parameter name, neuron axis and group ('hidden'|'embed')."""

    name: str
    neuron_dim: int
    group: str


@dataclass
class MatrixL0:
    """Nonzero census of one matrix (for `sparsecircuits info` and training logs)."""

    name: str
    shape: tuple[int, ...]
    nonzeros: int
    target: int
    neurons_below_min: int


def matrix_l0(name: str, w: Tensor, target: int, min_per_neuron: int, neuron_dim: int) -> MatrixL0:
    """Count nonzeros of a matrix and its neurons with fewer than `min_per_neuron` nonzeros."""
    nz = w.detach() != 0
    per_neuron = nz.sum(dim=1 - neuron_dim)
    fan = w.shape[1 - neuron_dim]
    below = int((per_neuron < min(min_per_neuron, fan)).sum())
    return MatrixL0(name, tuple(w.shape), int(nz.sum()), target, below)
