"""Weight and activation sparsity of Gao et al. (2025), "Weight-sparse transformers have
interpretable circuits" (arXiv 2511.13653).

Three pure pieces, used by the model and the training loop:

* `abs_topk(x, frac)` — activation sparsity: per token keep the `k = round(frac * d)` entries of
  largest magnitude along the last dimension, zero the rest. Gradients flow through kept entries.
* `topk_mask(w, k, min_per_neuron, neuron_dim)` / `project_(w, ...)` — weight sparsity: keep exactly
  `k` entries of a matrix by |w|, after first forcing in the `j` largest entries of every neuron
  (every slice along `neuron_dim`), so no neuron is left with fewer than `j` connections. Steps:
  1. scores = |w|; 2. the top-j indices of each neuron get score +inf; 3. one global top-k over the
  flattened scores. Exactly k entries are selected (ties broken by topk), all forced ones included.
* `kept_fraction(step, total, target, start, end)` — the L0 schedule: fully dense until
  `start * total`, then linear to `target` at `end * total` (defaults 1% and 50% of training).

Neuron axis convention (weights are stored as PyTorch `[out, in]`): matrices that read from the
residual stream (q, k, v, MLP in, unembedding) and the embedding `[vocab, d_model]` keep >= j per row;
matrices that write to it (attention out, MLP out) keep >= j per column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


def abs_topk(x: Float[Tensor, "... d"], frac: float) -> Float[Tensor, "... d"]:
    """Keep the round(frac * d) largest-|x| entries of the last dimension (at least 1); zero the rest."""
    d = x.shape[-1]
    k = topk_count(d, frac)
    if k >= d:
        return x
    idx = x.abs().topk(k, dim=-1, sorted=False).indices
    mask = torch.zeros_like(x).scatter_(-1, idx, 1.0)
    return x * mask


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
    """Boolean mask selecting exactly k entries: each neuron's top-j by |w|, then the global top-k."""
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
    scores = w.detach().abs().float()
    if min_per_neuron > 0:
        j = min(min_per_neuron, w.shape[1 - neuron_dim])
        forced = scores.topk(j, dim=1 - neuron_dim, sorted=False).indices
        scores = scores.scatter(1 - neuron_dim, forced, float("inf"))
    if k == numel:
        return torch.ones_like(w, dtype=torch.bool)
    idx = scores.flatten().topk(k, sorted=False).indices
    mask = torch.zeros(numel, dtype=torch.bool, device=w.device)
    mask[idx] = True
    return mask.view_as(w)


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
